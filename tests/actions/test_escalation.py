"""What an escalation tells Omnidesk about the customer and the reason, read from the tracker."""

from typing import Any, Dict, List

from connectors.omnidesk.action.escalation import (
    EscalationReason,
    build_escalation,
    customer_from,
    escalation_reason,
)


def user(intent: str, text: str = "...", **extra: Any) -> Dict[str, Any]:
    return {"event": "user", "text": text, "parse_data": {"intent": {"name": intent}}, **extra}


def test_the_latest_request_for_a_person_is_the_reason_even_after_the_email_form() -> None:
    events: List[Dict[str, Any]] = [user("greet"), user("request_human"), user("inform")]
    assert escalation_reason(events) == (EscalationReason.ASKED_FOR_PERSON, None)


def test_the_bot_decided_escalation_names_the_topic() -> None:
    reason, topic = escalation_reason([user("report_order_problem"), user("deny")])

    assert reason is EscalationReason.BOT_DECIDED
    assert reason.subject(topic) == "Chatbot handover: report order problem"


def test_slots_win_over_metadata_and_invalid_values_are_left_out() -> None:
    customer = customer_from(
        {"customer_email": "not an email", "customer_phone": "+31 20 123 4567"},
        {"email": "jane@example.com", "name": "José Müller!"},
    )

    assert customer.email == "jane@example.com"
    assert customer.phone == "+31201234567"
    assert customer.name == "Jose Muller"
    assert customer.from_address == "jane@example.com"


def test_a_phone_number_alone_is_the_from_address() -> None:
    customer = customer_from({}, {"customer": {"phone": "0031 6 1234 5678"}})

    assert customer.email is None
    assert customer.from_address == "+31612345678"


def test_the_first_chat_message_points_at_the_ticket_and_carries_recent_history() -> None:
    events = [user("request_human", "I need a person", input_channel="socketio")]
    escalation = build_escalation(events, {}, events[-1])

    message = escalation.first_chat_message(1234)

    assert message.startswith(
        "The chatbot handed this customer over. The whole conversation is in ticket #1234."
    )
    assert "**Customer:** I need a person" in message
    assert "intent" not in message
    assert escalation.channel == "socketio"
