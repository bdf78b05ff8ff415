"""Rasa as the relay sees it: the domain's texts, the tracker record, the hand-back.

Relayed turns are written to the tracker in the background, under Rasa's own
lock store, so they never race a bot turn. When a chat ends, the buffered turns
are written first and only then is the intent ``omnidesk_chat_ended`` sent into
Rasa's handler, so the tracker reads in the order things happened. The bot's
answer to it goes to the handoff's outbox (``customer.OutboxOutput``), after the
agent's last messages.
"""

import json
import logging
from typing import Any, Awaitable, Callable, Dict, Optional, Sequence

from rasa.core.channels.channel import UserMessage
from rasa.shared.core.events import BotUttered, UserUttered

from connectors.omnidesk.channel.sides import RecordEntry
from connectors.omnidesk.channel.switchboard import Handoff
from connectors.omnidesk.handoff import (
    ENTITY_HANDOFF_OUTCOME,
    INTENT_CHAT_ENDED,
    METADATA_WITH_AGENT,
    HandoffOutcome,
)

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[Any]]
# The output channel the bot's words go to when it takes a handoff's conversation back.
OutputFactory = Callable[[Handoff], Any]


class RasaBot:
    """The ``BotSide`` of the relay, on a running Rasa server."""

    def __init__(self, app: Any, handler: Handler, output_for: OutputFactory) -> None:
        self._app = app
        self._handler = handler
        self._output_for = output_for
        self._warned_no_intent = False
        self._warned_no_store = False

    def _agent(self) -> Any:
        return getattr(self._app.ctx, "agent", None)

    def _domain(self) -> Any:
        agent = self._agent()
        return getattr(agent, "domain", None) if agent is not None else None

    def response_text(self, name: str) -> Optional[str]:
        domain = self._domain()
        if domain is None:
            return None
        for variation in (getattr(domain, "responses", None) or {}).get(name, []):
            text = variation.get("text") if isinstance(variation, dict) else None
            if text:
                return str(text)
        return None

    def _knows_end_intent(self) -> bool:
        domain = self._domain()
        return domain is not None and INTENT_CHAT_ENDED in (getattr(domain, "intents", None) or [])

    async def record(self, conversation_id: str, entries: Sequence[RecordEntry]) -> None:
        agent = self._agent()
        store = getattr(agent, "tracker_store", None) if agent is not None else None
        if store is None:
            if not self._warned_no_store:
                self._warned_no_store = True
                logger.warning(
                    "No tracker store on this server: relayed turns are not written to trackers."
                )
            return
        async with agent.lock_store.lock(conversation_id):
            tracker = await store.get_or_create_tracker(conversation_id)
            # A write retried after a crash or a failed save skips what is already there.
            written = {
                (getattr(event, "metadata", None) or {}).get("omnidesk", {}).get("entry_id")
                for event in tracker.events
            }
            fresh = []
            for entry in entries:
                # A leave tried again after a failover may have kept an entry twice.
                if entry.entry_id not in written:
                    written.add(entry.entry_id)
                    fresh.append(entry)
            if not fresh:
                return
            for entry in fresh:
                metadata: Dict[str, Any] = {
                    "omnidesk": {
                        "role": entry.role,
                        "chat_session_id": entry.chat_session_id,
                        "entry_id": entry.entry_id,
                    }
                }
                if entry.agent_name:
                    metadata["omnidesk"]["agent_name"] = entry.agent_name
                if entry.message_number is not None:
                    metadata["omnidesk"]["message_number"] = entry.message_number
                if not entry.delivered:
                    metadata["omnidesk"]["undelivered"] = True
                if entry.role == "customer":
                    tracker.update(
                        UserUttered(
                            text=entry.text,
                            metadata=metadata,
                            timestamp=entry.timestamp,
                        )
                    )
                else:
                    data: Dict[str, Any] = {}
                    if entry.attachment_url:
                        data["attachment"] = entry.attachment_url
                    tracker.update(
                        BotUttered(
                            text=entry.text,
                            data=data,
                            metadata=metadata,
                            timestamp=entry.timestamp,
                        )
                    )
            await store.save(tracker)
        logger.debug(
            "Wrote %d relayed turns to the tracker of conversation %s.",
            len(fresh),
            conversation_id,
        )

    async def hand_back(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        if not self._knows_end_intent():
            if not self._warned_no_intent:
                self._warned_no_intent = True
                logger.warning(
                    "The bot's domain has no intent %s: the customer gets a plain text when a "
                    "chat ends, and the bot's slots are not reset. Add the intent and a rule "
                    "(see docs/domain.md).",
                    INTENT_CHAT_ENDED,
                )
            return False
        entities = json.dumps({ENTITY_HANDOFF_OUTCOME: outcome.value})
        message = UserMessage(
            f"/{INTENT_CHAT_ENDED}{entities}",
            output_channel=self._output_for(handoff),
            sender_id=handoff.conversation_id,
            input_channel=handoff.channel,
            metadata={
                "omnidesk": {
                    METADATA_WITH_AGENT: False,
                    "event": "chat_ended",
                    "outcome": outcome.value,
                    "chat_session_id": handoff.chat_session_id,
                }
            },
        )
        await self._handler(message)
        return True
