"""When no one can take the chat: agents offline, or Omnidesk down. The bot carries on."""

import pytest

from tests.e2e.people import CallbackCustomer, Desk, RasaApi, SocketCustomer, apoll
from tests.e2e.test_journey import ASKED_FOR_PERSON, GREETING, escalate

pytestmark = pytest.mark.e2e

NO_AGENTS = "none of my colleagues is available right now"
FAILED = "I couldn't reach my colleagues just now"


async def test_no_agent_online_the_customer_is_told_and_a_ticket_stays(
    socket_customer: SocketCustomer, desk: Desk, rasa: RasaApi
) -> None:
    customer = socket_customer
    email = f"offline.{customer.id[-8:]}@example.com"
    await desk.set_agents_online(False)

    await escalate(customer, email)
    await customer.wait_for_text(NO_AGENTS)

    tickets = [t for t in await desk.tickets() if t["from"] == email]
    assert [t["subject"] for t in tickets] == [ASKED_FOR_PERSON]
    assert not [c for c in await desk.chats() if c["email_address"] == email], "no chat opened"
    slots = (await rasa.tracker(customer.id))["slots"]
    assert slots["handoff_active"] is False
    assert slots["handoff_outcome"] == "no_agent"

    # The bot carries on.
    after = len(customer.texts())
    await customer.say("when are you open?")
    await customer.wait_for_text("open Monday to Friday", after=after)


async def test_omnidesk_down_the_customer_is_told_and_the_bot_carries_on(
    callback_customer: CallbackCustomer, desk: Desk, rasa: RasaApi
) -> None:
    customer = callback_customer
    email = f"down.{customer.id[-8:]}@example.com"
    await desk.add_fault(endpoint="*", status=503)

    await escalate(customer, email)
    await customer.wait_for_text(FAILED)

    # Nothing reached Omnidesk: every call was answered 503.
    assert not [t for t in await desk.tickets() if t["from"] == email]
    assert not [c for c in await desk.chats() if c["email_address"] == email]

    async def failed() -> object:
        slots = (await rasa.tracker(customer.id))["slots"]
        return slots["handoff_outcome"] == "failed" and slots["handoff_active"] is False

    await apoll(failed, "handoff_outcome failed in the tracker")

    # Omnidesk still down: the bot answers as before (the desk fixture clears the fault).
    after = len(customer.texts())
    await customer.say("hi")
    await customer.wait_for_text(GREETING, after=after)
