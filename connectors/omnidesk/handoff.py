"""The handoff's vocabulary: its outcomes and the control payload.

The action server and the channel are separate processes. The action tells the
channel that a conversation is now with an agent by uttering one custom JSON
message, the control payload, which travels back through the turn the action ran
in and is taken off the stream by the wrapped output channel. This module is the
one place that writes and reads that payload.
"""

import enum
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from connectors.omnidesk import rules

CONTROL_KEY = "omnidesk_handoff"
CONTROL_VERSION = 1

# Names the bot's domain uses (see docs/domain.md). One place, so the channel,
# the action and the tests agree.
SLOT_HANDOFF_ACTIVE = "handoff_active"
SLOT_CHAT_SESSION_ID = "omnidesk_chat_session_id"
SLOT_HANDOFF_OUTCOME = "handoff_outcome"
INTENT_CHAT_ENDED = "omnidesk_chat_ended"
ENTITY_HANDOFF_OUTCOME = "handoff_outcome"

# The channel's own view of the handoff, in every turn it hands to the bot:
# message.metadata["omnidesk"]["with_agent"]. The action trusts it over the slot.
METADATA_KEY = "omnidesk"
METADATA_WITH_AGENT = "with_agent"


def channel_says_with_agent(metadata: Optional[Mapping[str, Any]]) -> Optional[bool]:
    """What a turn's metadata says of the handoff: True, False, or None when it says nothing.

    None means no OmnideskInput handed the turn to the bot: it came in through a
    channel the connector does not serve (``rasa shell``, ``rest``, a channel
    listed beside OmnideskInput instead of under its ``customer_channels``).
    """
    ours = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    value = ours.get(METADATA_WITH_AGENT) if isinstance(ours, Mapping) else None
    return value if isinstance(value, bool) else None


class HandoffOutcome(str, enum.Enum):
    """How an escalation or a human chat ended; the values of the handoff_outcome slot."""

    STARTED = "started"
    NO_AGENT = "no_agent"
    FAILED = "failed"
    ALREADY_WITH_AGENT = "already_with_agent"
    CHANNEL_NOT_SERVED = "channel_not_served"
    ENDED_BY_AGENT = "ended_by_agent"
    ENDED_BY_CUSTOMER = "ended_by_customer"
    TIMED_OUT = "timed_out"


# Every Redis key of one conversation carries one of TAGS hash tags; the
# indexes that span conversations (open handoffs, waiting outboxes, waiting
# tracker records) are kept per tag, in the same hash slot as the conversations
# they list, so each step of the switchboard is one script on one slot.
TAGS = 64


def conversation_tag(conversation_id: str) -> str:
    """The hash tag of every Redis key of one conversation: 2 hex digits, one of ``TAGS``.

    A tag of the id itself would break on ids holding ``{`` or ``}``, and would
    spread the per-tag indexes over every slot; a digest keeps them to ``TAGS``
    slots, enough to spread a Redis Cluster's load, few enough to read them all
    in one round trip. A chat id carries its conversation's tag.
    """
    digest = hashlib.blake2s(conversation_id.encode("utf-8"), digest_size=4).digest()
    return f"{int.from_bytes(digest, 'big') % TAGS:02x}"


def all_tags() -> List[str]:
    """Every conversation tag, for the readers of the per-tag indexes."""
    return [f"{tag:02x}" for tag in range(TAGS)]


def new_chat_session_id(conversation_id: Optional[str] = None) -> str:
    """A fresh chatSessionID: 'rasa-', the conversation's tag, '-' and 30 random hex digits.

    A Rasa sender_id can hold characters chatSessionID forbids, and must not be
    guessable from the outside, so each handoff gets a random id that the
    switchboard maps back to the conversation. The tag puts the chat's lookup
    key in its conversation's hash slot on a Redis Cluster
    (channel/redis_switchboard.py); without a conversation the tag is random.
    """
    tag = (
        conversation_tag(conversation_id)
        if conversation_id is not None
        else f"{uuid.uuid4().int % TAGS:02x}"
    )
    return rules.CHAT_SESSION_ID.check(f"rasa-{tag}-{uuid.uuid4().hex[:30]}")


_TAGGED_CHAT = re.compile(r"rasa-([0-9a-f]{2})-[0-9a-f]{30}")


def tag_of_chat(chat_session_id: str) -> Optional[str]:
    """The conversation tag a chat id made by ``new_chat_session_id`` carries, or None."""
    match = _TAGGED_CHAT.fullmatch(chat_session_id)
    if match is None or int(match.group(1), 16) >= TAGS:
        return None
    return match.group(1)


class ControlPayloadError(ValueError):
    """A message carried the control key but not a valid control payload."""


@dataclass(frozen=True)
class HandoffStarted:
    """The control payload: this conversation is now with an agent in Omnidesk."""

    chat_session_id: str
    next_message_number: int

    def to_json_message(self) -> Dict[str, Any]:
        return {
            CONTROL_KEY: {
                "version": CONTROL_VERSION,
                "event": "started",
                "chat_session_id": self.chat_session_id,
                "next_message_number": self.next_message_number,
            }
        }


def is_control_payload(json_message: Optional[Mapping[str, Any]]) -> bool:
    return isinstance(json_message, Mapping) and CONTROL_KEY in json_message


def parse_control_payload(json_message: Mapping[str, Any]) -> HandoffStarted:
    """Read a control payload; raise ControlPayloadError naming what is wrong."""
    body = json_message.get(CONTROL_KEY)
    if not isinstance(body, Mapping):
        raise ControlPayloadError(f"{CONTROL_KEY} must be an object")
    if body.get("version") != CONTROL_VERSION:
        raise ControlPayloadError(
            f"{CONTROL_KEY}.version must be {CONTROL_VERSION}, got {body.get('version')!r}"
        )
    if body.get("event") != "started":
        raise ControlPayloadError(
            f"{CONTROL_KEY}.event must be 'started', got {body.get('event')!r}"
        )
    try:
        chat_session_id = rules.CHAT_SESSION_ID.check(body.get("chat_session_id"))
    except rules.FieldRuleError as error:
        raise ControlPayloadError(f"{CONTROL_KEY}.chat_session_id: {error.rule}") from error
    number = body.get("next_message_number")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ControlPayloadError(
            f"{CONTROL_KEY}.next_message_number must be a positive integer, got {number!r}"
        )
    return HandoffStarted(chat_session_id=chat_session_id, next_message_number=number)
