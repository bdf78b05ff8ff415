"""What only the channel uses: the modules that run inside ``rasa run``.

``OmnideskInput`` (input.py) is Rasa's face; the rest are plain pieces it
calls. Imported lazily, so that importing the relay or the switchboard alone
(tests, the benchmarks) does not load rasa and sanic.
"""

from typing import Any

__all__ = ["OmnideskInput"]


def __getattr__(name: str) -> Any:
    if name == "OmnideskInput":
        from connectors.omnidesk.channel.input import OmnideskInput

        return OmnideskInput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
