"""A customer's turn on its way in, before it is routed to the agent or the bot.

``repair_text`` makes its text and metadata valid Unicode; ``wait_for_turns_before``
lets the conversation's turns under way (an escalation among them) finish,
watching Rasa's lock without writing it, before the switchboard is read; ``mark_with_bot`` puts the
channel's own view into a turn that goes to the bot. input.py's handler calls
them in that order.
"""

import asyncio
import logging
from typing import Any

from rasa.core.channels.channel import UserMessage

from connectors.omnidesk.handoff import METADATA_KEY, METADATA_WITH_AGENT
from connectors.omnidesk.rules import valid_text

logger = logging.getLogger(__name__)

# How often a turn waiting for the turns under way looks at Rasa's lock again
# (Rasa's own wait polls every 1 s).
LOCK_POLL_SECONDS = 0.05

__all__ = ["LOCK_POLL_SECONDS", "mark_with_bot", "repair_text", "wait_for_turns_before"]


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


async def wait_for_turns_before(app: Any, conversation_id: str) -> None:
    """Let the conversation's turns under way finish before this one is routed.

    The turn that escalates holds Rasa's lock while the action opens the
    Omnidesk chat (seconds, up to the retry budget), and registers the
    handoff before it lets go. Waiting here until the tickets in the lock now
    are served, and only then reading the switchboard, sends a turn typed
    meanwhile to the agent once the chat is open, or to the bot when the
    escalation failed. The lock is only read, never written: Rasa's lock
    stores change a lock by reading it and saving it whole, so with several
    replicas a second writer can lose a ticket or bring back a served one (a
    turn then waits for it to expire, 60 s). Rasa's handler takes the lock
    itself once the turn is routed. docs/architecture.md ("Routing a turn
    under Rasa's lock") says why.
    """
    agent = getattr(getattr(app, "ctx", None), "agent", None)
    lock_store = getattr(agent, "lock_store", None)
    if lock_store is None:
        return
    try:
        lock = lock_store.get_lock(conversation_id)
        if lock is None:
            return
        lock.remove_expired_tickets()
        if not lock.is_someone_waiting():
            return
        # The turns under way now; those that come later are not waited for.
        last = lock.last_issued
        while True:
            await asyncio.sleep(LOCK_POLL_SECONDS)
            lock = lock_store.get_lock(conversation_id)
            if lock is None:
                return
            lock.remove_expired_tickets()  # on our copy only: tickets expire by time
            if not lock.is_someone_waiting() or lock.now_serving > last:
                return
    except Exception as error:
        # An unreachable lock store: the turn is routed on what the switchboard says now.
        logger.warning(
            "Could not read Rasa's lock for conversation %s before routing its turn: %s: %s",
            conversation_id,
            type(error).__name__,
            error,
        )


def mark_with_bot(message: UserMessage) -> None:
    """Put the channel's own view of the handoff into the turn: this one goes to the bot.

    The action trusts it over the ``handoff_active`` slot, which can outlive a
    handoff (a failed end, a restart with memory://, lost Redis keys). A client's
    own ``omnidesk`` metadata is replaced, never trusted.
    """
    metadata = dict(message.metadata) if isinstance(message.metadata, dict) else {}
    metadata[METADATA_KEY] = {METADATA_WITH_AGENT: False}
    message.metadata = metadata
