"""What an operator reads in Rasa's log while a customer is handed over."""

import pytest

from tests.e2e.people import CallbackCustomer, Desk, RasaApi, poll
from tests.e2e.stack import Stack
from tests.e2e.test_journey import chat_session_of, escalate

pytestmark = pytest.mark.e2e


async def test_rasa_log_has_one_line_per_handoff_event_and_no_secret(
    callback_customer: CallbackCustomer, desk: Desk, rasa: RasaApi, stack: Stack
) -> None:
    # Loading the example bot's scikit-learn classifier turns the root logger down
    # to WARNING; the connector's own lines must survive that.
    await escalate(callback_customer, "logreader@example.com")
    chat_id = await chat_session_of(rasa, callback_customer.id)
    await desk.end(chat_id)
    log = stack.log_dir / "rasa.log"

    def both_lines() -> bool:
        text = log.read_text(errors="replace")
        return (
            f"Handoff started: conversation {callback_customer.id}" in text
            and f"Handoff ended (ended_by_agent): conversation {callback_customer.id}" in text
        )

    await poll(both_lines, "the handoff's start and end lines in rasa.log")
    assert stack.hookpoint_secret not in log.read_text(errors="replace")
