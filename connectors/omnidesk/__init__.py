"""rasa-omnidesk: hand a Rasa conversation to a live agent in Omnidesk, and take it back.

credentials.yml names the channel as ``connectors.omnidesk.OmnideskInput``.
The channel is imported lazily, so that the action server, which has rasa_sdk
but need not load rasa, can import ``connectors.omnidesk.client`` and
``connectors.omnidesk.settings`` without pulling in rasa or sanic.
"""

from typing import Any

__all__ = ["OmnideskInput"]


def __getattr__(name: str) -> Any:
    if name == "OmnideskInput":
        from connectors.omnidesk.channel.input import OmnideskInput

        return OmnideskInput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
