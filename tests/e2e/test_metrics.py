"""An operator's Prometheus scrapes both processes while a customer is handed over.

The real stack: `rasa run` with the channel serving /webhooks/omnidesk/metrics,
`rasa run actions` serving its metrics on OMNIDESK_ACTION_METRICS_PORT, the
sandbox as Omnidesk and a socket.io customer. Each counter moves by what this
one handoff did (read before and after: other tests share the stack).
"""

from typing import Optional, Tuple

import pytest

from tests.channel.test_metrics import Samples, moved, scrape_url, value
from tests.e2e.people import Desk, RasaApi, SocketCustomer, apoll
from tests.e2e.stack import Stack
from tests.e2e.test_journey import CLOSED_BY_AGENT, CONNECTED, chat_session_of, escalate, png

pytestmark = pytest.mark.e2e


async def scrape_both(stack: Stack) -> Tuple[Samples, Samples]:
    port = stack.env["OMNIDESK_ACTION_METRICS_PORT"]
    rasa = await scrape_url(f"{stack.rasa_url}/webhooks/omnidesk/metrics")
    actions = await scrape_url(f"http://127.0.0.1:{port}/metrics")
    return rasa, actions


async def test_a_real_handoff_moves_each_counter_in_the_process_that_saw_it(
    socket_customer: SocketCustomer, desk: Desk, rasa: RasaApi, stack: Stack
) -> None:
    rasa_before, actions_before = await scrape_both(stack)

    await escalate(socket_customer, "metrics@example.com")
    await socket_customer.wait_for_text(CONNECTED)
    chat_id = await chat_session_of(rasa, socket_customer.id)
    during, _ = await scrape_both(stack)
    assert (
        value(during, "omnidesk_handoffs_open") == value(rasa_before, "omnidesk_handoffs_open") + 1
    )

    await socket_customer.say("Where is my parcel?")

    async def relayed() -> bool:
        return len((await desk.chat(chat_id))["messages"]) == 2

    await apoll(relayed, "the customer's turn at the desk")
    assert (await desk.reply(chat_id, "Let me check", name="Anna"))["hookpoint_status"] == 200
    await socket_customer.wait_for_text("Let me check")
    sent = await desk.upload(chat_id, "label.png", png(3), "image/png")
    assert sent["hookpoint_status"] == 200
    await socket_customer.wait(socket_customer.agent_file, "the agent's file")
    assert (await desk.typing(chat_id, True))["hookpoint_status"] == 200
    await socket_customer.wait(lambda: socket_customer.agent_typing_seen(True), "the typing")
    before_end = len(socket_customer.texts())
    assert (await desk.end(chat_id))["hookpoint_status"] == 200
    await socket_customer.wait_for_text(CLOSED_BY_AGENT, after=before_end)

    async def settled() -> Optional[Tuple[Samples, Samples]]:
        both = await scrape_both(stack)
        ended = moved(
            rasa_before, both[0], "omnidesk_handoffs_ended_total", outcome="ended_by_agent"
        )
        return both if ended == 1 else None

    rasa_after, actions_after = await apoll(settled, "the end in the channel's metrics")

    # The action server began the handoff and opened the chat.
    assert (
        moved(
            actions_before,
            actions_after,
            "omnidesk_handoffs_started_total",
            reason="asked_for_person",
        )
        == 1
    )
    for call in ("chatbot", "requestChatConfig", "notifyUserNewChatMessage"):
        assert (
            moved(
                actions_before, actions_after, "omnidesk_api_calls_total", call=call, status="200"
            )
            == 1
        )
    assert ("omnidesk_handoffs_open", frozenset()) not in actions_after

    # The channel relayed, delivered and ended it.
    def channel(name: str, **labels: str) -> float:
        return moved(rasa_before, rasa_after, name, **labels)

    assert channel("omnidesk_handoffs_started_total", reason="asked_for_person") == 0
    assert channel("omnidesk_customer_turns_relayed_total") == 1
    assert channel("omnidesk_first_agent_reply_seconds_count") == 1
    for kind in ("message", "file", "typing"):
        assert channel("omnidesk_agent_deliveries_total", kind=kind, result="delivered") == 1
    assert channel("omnidesk_api_calls_total", call="notifyUserNewChatMessage", status="200") == 1
    for hookpoint in (
        "messageForCustomer",
        "uploadForCustomer",
        "typingIndicatorForCustomer",
        "endSession",
    ):
        assert channel("omnidesk_hookpoint_answers_total", hookpoint=hookpoint, status="200") == 1
    assert value(rasa_after, "omnidesk_handoffs_open") == value(
        rasa_before, "omnidesk_handoffs_open"
    )

    # What happened to this one chat, from both logs: one line per step, both ids, no text.
    rasa_log = (stack.log_dir / "rasa.log").read_text(errors="replace")
    actions_log = (stack.log_dir / "actions.log").read_text(errors="replace")
    conversation = f"conversation_id={socket_customer.id}"
    assert f"handoff step=requested {conversation} reason=asked_for_person" in actions_log
    assert f"handoff step=chat_opened {conversation} chat_session_id={chat_id}" in actions_log
    for step in ("relay_started", "agent_first_reply", "ended"):
        assert f"handoff step={step} {conversation} chat_session_id={chat_id}" in rasa_log
    # One line per message is DEBUG (rasa run --debug), not in an INFO log.
    assert "step=customer_turn_relayed" not in rasa_log
    assert "Where is my parcel?" not in rasa_log + actions_log
    assert stack.hookpoint_secret not in rasa_log + actions_log
