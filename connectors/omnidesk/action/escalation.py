"""What an escalation tells Omnidesk: why, who the customer is, and the history.

Pure functions over the tracker's event dicts and slots, so they are tested
without an action server. The action (``connectors.omnidesk.action.escalate_to_human``) sends what
these build.
"""

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple

from connectors.omnidesk import rules
from connectors.omnidesk.action.transcript import TranscriptOptions, render_transcript

SLOT_CUSTOMER_EMAIL = "customer_email"
SLOT_CUSTOMER_PHONE = "customer_phone"
SLOT_CUSTOMER_NAME = "customer_name"

INTENT_REQUEST_HUMAN = "request_human"
INTENT_NLU_FALLBACK = "nlu_fallback"

# Turns that answer the bot's own questions (the email form, "want a person?")
# say nothing about why the customer escalated.
ANSWER_INTENTS = frozenset({"affirm", "deny", "inform"})

# How many of the latest customer turns count when looking for the reason.
REASON_LOOKBACK = 6

# The first chat message carries the latest part of the history; the whole is in
# the chatbot-log ticket.
CHAT_HISTORY_MAX_CHARS = 3000


class EscalationReason(str, enum.Enum):
    """Why the conversation goes to a person; it makes the ticket's subject."""

    ASKED_FOR_PERSON = "asked_for_person"
    NOT_UNDERSTOOD = "not_understood"
    BOT_DECIDED = "bot_decided"

    def subject(self, topic: Optional[str] = None) -> str:
        if self is EscalationReason.ASKED_FOR_PERSON:
            return "Chatbot handover: the customer asked for a person"
        if self is EscalationReason.NOT_UNDERSTOOD:
            return "Chatbot handover: the chatbot did not understand the customer"
        if topic:
            return f"Chatbot handover: {topic.replace('_', ' ')}"
        return "Chatbot handover"


@dataclass(frozen=True)
class Customer:
    """What the bot knows of the customer, each value already valid for Omnidesk."""

    email: Optional[str] = None
    phone: Optional[str] = None
    name: Optional[str] = None

    @property
    def from_address(self) -> Optional[str]:
        """The chatbot log's ``from``: the email address, else the phone number."""
        return self.email or self.phone


@dataclass(frozen=True)
class Escalation:
    """Everything the action sends, built from the tracker before any call."""

    reason: EscalationReason
    subject: str
    customer: Customer
    # The whole conversation, for the chatbot-log ticket.
    transcript: str
    # Its latest part, for the first message of the chat.
    chat_history: str
    channel: Optional[str]
    page_url: Optional[str]

    def first_chat_message(self, ticket_id: Optional[int]) -> str:
        """The first message of the Omnidesk chat: a pointer to the ticket and the latest history."""
        if ticket_id is not None:
            pointer = f"The chatbot handed this customer over. The whole conversation is in ticket #{ticket_id}."
        else:
            pointer = "The chatbot handed this customer over."
        return f"{pointer}\n\n{self.chat_history}"


def build_escalation(
    events: Sequence[Mapping[str, Any]],
    slots: Mapping[str, Any],
    latest_message: Optional[Mapping[str, Any]] = None,
) -> Escalation:
    """Read the reason, the customer and the history from a tracker's events and slots."""
    reason, topic = escalation_reason(events)
    metadata = _metadata(latest_message) or _latest_user_metadata(events)
    customer = customer_from(slots, metadata)
    note = unverified_note(customer, customer_from(slots, None))
    return Escalation(
        reason=reason,
        subject=rules.valid_text(reason.subject(topic)),
        customer=customer,
        transcript=render_transcript(events, slots) + note,
        chat_history=render_transcript(
            events,
            slots,
            TranscriptOptions(
                title=None,
                show_intents=False,
                max_chars=CHAT_HISTORY_MAX_CHARS - len(note),
            ),
        )
        + note,
        channel=_latest_channel(events),
        page_url=_page_url(metadata),
    )


def unverified_note(customer: Customer, from_slots: Customer) -> str:
    """A line for the agent naming the customer details that only the client's metadata gave.

    The bot's slots come from the conversation; a message's metadata is whatever
    the customer's own client sent, which anyone can set. The agent should not
    take an email address from there as proof of who they are talking to.
    """
    fields = [
        label
        for label, value, trusted in (
            ("email", customer.email, from_slots.email),
            ("phone", customer.phone, from_slots.phone),
            ("name", customer.name, from_slots.name),
        )
        if value is not None and value != trusted
    ]
    if not fields:
        return ""
    return (
        f"\n_Not verified: the customer's {', '.join(fields)} came from their own app "
        "(message metadata), not from the conversation; confirm before relying on "
        f"{'it' if len(fields) == 1 else 'them'}._\n"
    )


def escalation_reason(
    events: Sequence[Mapping[str, Any]],
) -> Tuple[EscalationReason, Optional[str]]:
    """Why the customer is escalated, from the latest customer turns.

    The latest ``request_human`` or ``nlu_fallback`` among the last few turns
    decides; otherwise the bot decided, on the topic of the latest turn that was
    not just an answer to the bot's own question.
    """
    topic: Optional[str] = None
    for intent in list(_user_intents(events))[:REASON_LOOKBACK]:
        if intent == INTENT_REQUEST_HUMAN:
            return EscalationReason.ASKED_FOR_PERSON, None
        if intent == INTENT_NLU_FALLBACK:
            return EscalationReason.NOT_UNDERSTOOD, None
        if topic is None and intent not in ANSWER_INTENTS:
            topic = intent
    return EscalationReason.BOT_DECIDED, topic


def customer_from(slots: Mapping[str, Any], metadata: Optional[Mapping[str, Any]]) -> Customer:
    """The customer's email, phone and name: slots first, then the message's metadata.

    A value Omnidesk would reject is dropped, not sent: the fields are optional,
    and a rejected call would cost the whole escalation.
    """
    nested = metadata.get("customer") if metadata else None
    sources = [slots, metadata or {}, nested if isinstance(nested, Mapping) else {}]
    email = _first_valid(
        (source.get(key) for source in sources for key in (SLOT_CUSTOMER_EMAIL, "email")),
        rules.EMAIL_ADDRESS,
        normalise=lambda value: value.strip(),
    )
    phone = _first_valid(
        (source.get(key) for source in sources for key in (SLOT_CUSTOMER_PHONE, "phone")),
        rules.PHONE_NUMBER,
        normalise=_normalise_phone,
    )
    name = None
    for source in sources:
        for key in (SLOT_CUSTOMER_NAME, "name"):
            value = source.get(key)
            if isinstance(value, str):
                name = name or rules.clean_customer_name(value)
    return Customer(email=email, phone=phone, name=name)


def _first_valid(
    values: Iterable[Any], rule: rules.TextRule, normalise: Callable[[str], str]
) -> Optional[str]:
    for value in values:
        if not isinstance(value, str) or not value.strip():
            continue
        try:
            return rule.check(rules.valid_text(normalise(value)))
        except rules.FieldRuleError:
            continue
    return None


def _normalise_phone(value: str) -> str:
    digits = "".join(character for character in value if character.isdigit())
    if value.strip().startswith("00"):
        return "+" + digits[2:]
    return "+" + digits if value.strip().startswith("+") else value.strip()


def _user_intents(events: Sequence[Mapping[str, Any]]) -> Iterable[str]:
    """Intents of the customer's turns that the bot read, latest first."""
    for event in reversed(events):
        if event.get("event") != "user":
            continue
        parse_data = event.get("parse_data")
        intent = parse_data.get("intent") if isinstance(parse_data, Mapping) else None
        name = intent.get("name") if isinstance(intent, Mapping) else None
        if isinstance(name, str) and name:
            yield name


def _metadata(message: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    metadata = message.get("metadata") if message else None
    return metadata if isinstance(metadata, Mapping) and metadata else None


def _latest_user_metadata(events: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    for event in reversed(events):
        if event.get("event") == "user":
            return _metadata(event)
    return None


def _latest_channel(events: Sequence[Mapping[str, Any]]) -> Optional[str]:
    for event in reversed(events):
        channel = event.get("input_channel") if event.get("event") == "user" else None
        if isinstance(channel, str) and channel:
            return channel
    return None


def _page_url(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    value = metadata.get("url") if metadata else None
    if isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) < 2000:
        return rules.valid_text(value)
    return None
