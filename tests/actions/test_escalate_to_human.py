"""action_escalate_to_human, run by the action server's executor against a sandbox Omnidesk."""

import logging
import os
import pathlib
import subprocess
import sys
from typing import Any, Dict, List, Optional

import pytest
import yaml
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    Event,
    SessionStarted,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker, EventVerbosity
from rasa_sdk.executor import ActionExecutor

from connectors.omnidesk import handoff
from connectors.omnidesk.settings import OmnideskSettings
from omnidesk_sandbox.testing import Sandbox

ACTION = "action_escalate_to_human"
SENDER = "web-7f3a9c"


DOMAIN = Domain.load(str(pathlib.Path(__file__).parents[2] / "domain.yml"))


def request(events: List[Event], slots: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The JSON body Rasa posts to the action server's /webhook (rasa/core/actions/action.py)."""
    events = events + [SlotSet(name, value) for name, value in (slots or {}).items()]
    tracker = DialogueStateTracker.from_events(SENDER, events, slots=DOMAIN.slots)
    return {
        "next_action": ACTION,
        "sender_id": SENDER,
        "tracker": tracker.current_state(EventVerbosity.ALL),
        "domain": DOMAIN.as_dict(),
        "version": "3.6.21",
    }


# What OmnideskInput puts into every turn it hands to the bot (incoming.mark_with_bot),
# beside the widget's own metadata.
SERVED_TURN = {"url": "https://shop.example.com/help", "omnidesk": {"with_agent": False}}


def asked_for_a_person(email: Optional[str] = "jane@example.com") -> List[Event]:
    return [
        ActionExecuted("action_session_start"),
        SessionStarted(),
        ActionExecuted("action_listen"),
        UserUttered(
            "where is my *order*?",
            intent={"name": "ask_shipping", "confidence": 0.91},
            input_channel="socketio",
            metadata=SERVED_TURN,
        ),
        BotUttered("We ship within 1 to 2 working days."),
        ActionExecuted("action_listen"),
        UserUttered(
            "I want to talk to a person",
            intent={"name": "request_human", "confidence": 0.99},
            input_channel="socketio",
            metadata=SERVED_TURN,
        ),
        *([SlotSet("customer_email", email)] if email else []),
        ActionExecuted("utter_handoff_connecting"),
        BotUttered("One moment, I'm looking for a colleague who can help you."),
    ]


def slots_set(response: Dict[str, Any]) -> Dict[str, Any]:
    return {
        event["name"]: event["value"] for event in response["events"] if event["event"] == "slot"
    }


def responses(response: Dict[str, Any]) -> List[Optional[str]]:
    return [message.get("response") for message in response["responses"]]


async def test_online_agent_gets_the_transcript_and_a_new_chat(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    response = await executor.run(
        request(asked_for_a_person(), {"customer_email": "jane@example.com"})
    )

    assert response is not None
    [ticket] = sandbox.tickets
    assert ticket.sender == "jane@example.com"
    assert ticket.subject == "Chatbot handover: the customer asked for a person"
    assert ticket.brand_id == "7"
    assert "**Customer:** where is my \\*order\\*?" in ticket.message
    assert "**Bot:** We ship within 1 to 2 working days" in ticket.message
    assert "I want to talk to a person" in ticket.message

    slots = slots_set(response)
    assert slots["handoff_active"] is True
    assert slots["handoff_outcome"] == "started"
    chat_session_id = slots["omnidesk_chat_session_id"]
    chat = sandbox.chat(chat_session_id)
    assert chat.email_address == "jane@example.com"
    assert chat.url == "https://shop.example.com/help"
    # The chat's own hookpoint base: a token derived from its id, never the secret.
    settings = OmnideskSettings.from_env()
    assert chat.chat_server == settings.chat_server_for(chat_session_id)
    assert chat.chat_server.startswith("http://127.0.0.1:5005/webhooks/omnidesk/hook/")
    assert "Hookpoint0Secret0For0Tests0Only" not in chat.chat_server
    [first] = chat.messages
    assert first.number == 1
    assert f"ticket #{ticket.ticket_id}" in first.text
    assert "I want to talk to a person" in first.text

    control = [m["custom"] for m in response["responses"] if m.get("custom")]
    assert control == [handoff.HandoffStarted(chat_session_id, 2).to_json_message()]
    assert "utter_handoff_connected" in responses(response)


async def test_no_agent_online_leaves_the_ticket_and_opens_no_chat(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    sandbox.set_agents_online(False)

    response = await executor.run(request(asked_for_a_person()))

    assert response is not None
    assert len(sandbox.tickets) == 1
    assert sandbox.chats == []
    assert slots_set(response)["handoff_outcome"] == "no_agent"
    assert slots_set(response)["handoff_active"] is False
    assert responses(response) == ["utter_handoff_no_agents"]
    assert not any(m.get("custom") for m in response["responses"])


async def test_omnidesk_down_tells_the_customer_and_the_bot_carries_on(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    sandbox.inject_fault("*", status=503, count=100)

    response = await executor.run(request(asked_for_a_person()))

    assert response is not None
    assert sandbox.chats == []
    assert slots_set(response) == {"handoff_active": False, "handoff_outcome": "failed"}
    assert responses(response) == ["utter_handoff_failed"]


async def test_a_conversation_already_with_an_agent_is_not_escalated_again(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    response = await executor.run(
        request(
            with_channel_mark(asked_for_a_person(), with_agent=True),
            {"handoff_active": True, "omnidesk_chat_session_id": "rasa-" + "b" * 32},
        )
    )

    assert response is not None
    assert sandbox.calls == []
    assert responses(response) == ["utter_handoff_already_active"]
    assert slots_set(response) == {"handoff_outcome": "already_with_agent"}


async def test_the_bot_not_understanding_makes_the_subject(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    events: List[Event] = [
        ActionExecuted("action_listen"),
        UserUttered(
            "blorp fizz", intent={"name": "nlu_fallback", "confidence": 0.5}, metadata=SERVED_TURN
        ),
        BotUttered(
            "Would you like to talk to one of my colleagues?",
            data={"buttons": [{"title": "Yes, a person please", "payload": "/affirm"}]},
        ),
        ActionExecuted("action_listen"),
        UserUttered("/affirm", intent={"name": "affirm", "confidence": 1.0}, metadata=SERVED_TURN),
    ]

    response = await executor.run(request(events))

    assert response is not None
    [ticket] = sandbox.tickets
    assert ticket.subject == "Chatbot handover: the chatbot did not understand the customer"
    assert ticket.sender is None
    assert "chose the button **Yes, a person please**" in ticket.message


def test_the_action_server_refuses_to_start_without_omnidesk_settings() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OMNIDESK_")}
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rasa_sdk.executor import ActionExecutor; ActionExecutor().register_package('actions')",
        ],
        cwd=pathlib.Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode != 0
    assert "OMNIDESK_CHAT_ACCOUNT_TOKEN" in started.stderr
    assert "OMNIDESK_HOOKPOINT_SECRET" in started.stderr


async def test_a_lone_surrogate_in_the_conversation_does_not_stop_the_escalation(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    events = [
        *asked_for_a_person(),
        BotUttered("agent said �", metadata={"omnidesk": {"role": "agent", "agent_name": "A�"}}),
    ]
    response = await executor.run(request(events, {"customer_name": "Jo\ud800"}))
    assert response is not None
    assert slots_set(response)["handoff_outcome"] == "started"
    [ticket] = sandbox.tickets
    assert "agent said \ufffd" in ticket.message


def with_channel_mark(events: List[Event], with_agent: bool) -> List[Event]:
    """The same conversation, its latest turn marked by the channel as it hands it to the bot."""
    marked = list(events)
    for index in range(len(marked) - 1, -1, -1):
        event = marked[index]
        if isinstance(event, UserUttered):
            metadata = {**(event.metadata or {}), "omnidesk": {"with_agent": with_agent}}
            marked[index] = UserUttered(
                event.text, intent=event.intent, input_channel="socketio", metadata=metadata
            )
            break
    return marked


async def test_a_stale_handoff_slot_does_not_lock_the_customer_out_of_agents(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    # The slot says "with an agent" (a failed end, a restart with memory://), the
    # channel that handed this turn to the bot says not: the channel is right.
    events = with_channel_mark(asked_for_a_person(), with_agent=False)
    response = await executor.run(
        request(events, {"handoff_active": True, "omnidesk_chat_session_id": "rasa-" + "c" * 32})
    )
    assert response is not None
    assert slots_set(response)["handoff_outcome"] == "started"
    assert slots_set(response)["handoff_active"] is True
    assert len(sandbox.chats) == 1


async def test_the_channels_word_that_the_customer_is_with_an_agent_is_kept(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    events = with_channel_mark(asked_for_a_person(), with_agent=True)
    response = await executor.run(request(events))
    assert response is not None
    assert sandbox.calls == []
    assert slots_set(response) == {"handoff_outcome": "already_with_agent"}


def unserved(channel: str) -> List[Event]:
    """The same conversation, typed into ``rasa shell`` (cmdline) or posted to ``rest``."""
    return [
        UserUttered(event.text, intent=event.intent, input_channel=channel)
        if isinstance(event, UserUttered)
        else event
        for event in asked_for_a_person()
    ]


@pytest.mark.parametrize("channel", ["cmdline", "rest"])
async def test_a_channel_the_connector_does_not_serve_gets_a_reason_and_no_chat(
    executor: ActionExecutor,
    sandbox: Sandbox,
    channel: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.omnidesk.action.escalate_to_human")
    first = await executor.run(request(unserved(channel)))
    again = await executor.run(request(unserved(channel)))

    for response in (first, again):
        assert response is not None
        assert responses(response) == ["utter_omnidesk_channel_not_served"]
        assert not any(message.get("custom") for message in response["responses"])
        assert slots_set(response) == {
            "handoff_active": False,
            "handoff_outcome": "channel_not_served",
        }
    # Nothing reached Omnidesk: no ticket, no chat waiting for an agent.
    assert sandbox.calls == []
    assert sandbox.chats == []
    refusals = [r for r in caplog.records if "channel_not_served" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING, logging.INFO]
    assert f"channel={channel}" in refusals[0].getMessage()
    assert "customer_channels" in refusals[0].getMessage()


def test_the_refusal_response_is_in_the_domains() -> None:
    # The flows fragment's `controlled` mappings are Rasa Pro's: read it as YAML.
    for path in ("domain.yml", "docs/domain-fragment.yml", "docs/flows-domain-fragment.yml"):
        text = (pathlib.Path(__file__).parents[2] / path).read_text(encoding="utf-8")
        assert "utter_omnidesk_channel_not_served" in yaml.safe_load(text)["responses"], path


def triggered(events: List[Event]) -> List[Event]:
    """The conversation, then Rasa's own turn for trigger_intent or a reminder."""
    return [
        *events,
        ActionExecuted("action_listen"),
        UserUttered.create_external("request_human", input_channel="socketio"),
    ]


async def test_an_intent_triggered_through_rasa_escalates_a_served_conversation(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    response = await executor.run(request(triggered(asked_for_a_person())))
    assert response is not None
    assert slots_set(response)["handoff_outcome"] == "started"
    assert len(sandbox.chats) == 1


async def test_an_intent_triggered_through_rasa_keeps_an_unserved_conversation_from_omnidesk(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    response = await executor.run(request(triggered(unserved("rest"))))
    assert response is not None
    assert responses(response) == ["utter_omnidesk_channel_not_served"]
    assert sandbox.calls == []


async def test_an_intent_triggered_through_rasa_trusts_the_slot_for_an_open_handoff(
    executor: ActionExecutor, sandbox: Sandbox
) -> None:
    response = await executor.run(
        request(
            triggered(asked_for_a_person()),
            {"handoff_active": True, "omnidesk_chat_session_id": "rasa-" + "d" * 32},
        )
    )
    assert response is not None
    assert sandbox.calls == []
    assert responses(response) == ["utter_handoff_already_active"]
