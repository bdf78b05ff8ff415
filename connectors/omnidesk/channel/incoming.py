"""A customer's turn on its way in, before it is routed to the agent or the bot.

``repair_text`` makes its text and metadata valid Unicode; ``mark_with_bot``
puts the channel's own view into a turn that goes to the bot. input.py's
handler calls them; the relay (relay.py) decides in between, in the order the
conversation's turns arrived.
"""

import logging
from typing import Any

from rasa.core.channels.channel import UserMessage

from connectors.omnidesk.handoff import METADATA_KEY, METADATA_WITH_AGENT
from connectors.omnidesk.rules import valid_text

logger = logging.getLogger(__name__)

__all__ = ["mark_with_bot", "repair_text"]


def _valid(value: Any, depth: int = 0) -> Any:
    """``value`` with every string in it made valid Unicode (lone surrogates become U+FFFD)."""
    if isinstance(value, str):
        return valid_text(value)
    if depth > 20:
        return value
    if isinstance(value, dict):
        return {_valid(key, depth + 1): _valid(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_valid(item, depth + 1) for item in value]
    return value


def repair_text(message: UserMessage) -> None:
    """Repair the turn's text and metadata before the tracker or the agent sees them.

    A customer's JSON may carry ``"\\ud800"``: valid JSON, but no UTF-8 string.
    Kept as is, it breaks the tracker store, the transcript and the multipart
    body of every later escalation; repaired here, it shows as U+FFFD.
    """
    if isinstance(message.text, str):
        message.text = valid_text(message.text)
    if isinstance(message.metadata, dict):
        message.metadata = _valid(message.metadata)


def mark_with_bot(message: UserMessage) -> None:
    """Put the channel's own view of the handoff into the turn: this one goes to the bot.

    The action trusts it over the ``handoff_active`` slot, which can outlive a
    handoff (a failed end, a restart with memory://, lost Redis keys). A client's
    own ``omnidesk`` metadata is replaced, never trusted.
    """
    metadata = dict(message.metadata) if isinstance(message.metadata, dict) else {}
    metadata[METADATA_KEY] = {METADATA_WITH_AGENT: False}
    message.metadata = metadata
