"""What only the action server uses: ``action_escalate_to_human`` and its transcript.

A bot's action server registers the action with one line in its actions
package::

    from connectors.omnidesk.action import ActionEscalateToHuman  # noqa: F401

or serves this package directly (``rasa run actions --actions
connectors.omnidesk.action``). It imports rasa_sdk and the shared modules
(client, settings, rules, handoff), never rasa or the channel. The action is
imported lazily: importing it checks the OMNIDESK_* settings, as the action
server's start-up should, and the transcript alone needs none.
"""

from typing import Any

__all__ = ["ActionEscalateToHuman"]


def __getattr__(name: str) -> Any:
    if name == "ActionEscalateToHuman":
        from connectors.omnidesk.action.escalate_to_human import ActionEscalateToHuman

        return ActionEscalateToHuman
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
