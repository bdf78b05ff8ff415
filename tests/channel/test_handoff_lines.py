"""What an operator greps for "what happened to this one chat": one structured line per step.

A handoff on a real channel (socket.io widget, the sandbox as Omnidesk) leaves
one line per step with the conversation and chat id, in key=value or JSON as
``log_format`` says, without the customer's words unless ``log_message_text``
asks for them, and never a secret.
"""

import json
import logging
import re
from typing import Any, Dict, List

import pytest

from connectors.omnidesk import handoff_events
from tests.channel.conftest import ACCOUNT_TOKEN, SECRET, SERVER_TOKEN, channel_server
from tests.channel.test_socketio_relay import SOCKETIO, Widget

CUSTOMER_WORDS = "my parcel number is 4711"


async def run_handoff(caplog: Any, **settings: Any) -> Dict[str, Any]:
    """One handoff with a customer turn, an agent reply and the agent's end; its lines."""
    # DEBUG: the per-message customer_turn_relayed lines are DEBUG, the steps INFO.
    caplog.set_level(logging.DEBUG, logger=handoff_events.LOGGER_NAME)
    async with channel_server(SOCKETIO, **settings) as server:
        widget = Widget()
        sid = await widget.connect(server.url)
        try:
            started = await server.open_chat()
            chat = started.chat_session_id
            server.escalate_on("human please", started)
            await widget.say("human please")
            await server.wait_with_agent(sid)
            await widget.say(CUSTOMER_WORDS)
            await server.sandbox.wait_for(lambda: len(server.sandbox.chat(chat).messages) == 2)
            assert (await server.sandbox.agent_reply(chat, "On it", name="Anna")).body == "ok"
            await widget.wait_for(lambda: "On it" in widget.texts())
            assert (await server.sandbox.agent_end(chat)).body == "ok"
            await widget.wait_for(lambda: "Back with the bot (ended_by_agent)." in widget.texts())
            await server.relay.wait_idle(3.0)
            token = server.settings.hookpoint_token(chat)
            customer_token = server.settings.customer_token(chat)
        finally:
            await widget.close()
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == handoff_events.LOGGER_NAME
    ]
    levels = {
        record.getMessage().split(" ", 2)[1]: record.levelname
        for record in caplog.records
        if record.name == handoff_events.LOGGER_NAME and record.getMessage().startswith("handoff ")
    }
    everything = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (SECRET, token, customer_token, ACCOUNT_TOKEN, SERVER_TOKEN):
        assert secret not in everything
    return {"lines": lines, "sid": sid, "chat": chat, "levels": levels}


def steps_of(lines: List[str], sid: str) -> List[str]:
    return [line.split(" ", 2)[1] for line in lines if f"conversation_id={sid}" in line]


async def test_each_step_is_one_key_value_line_with_both_ids_and_no_message_text(
    caplog: Any,
) -> None:
    seen = await run_handoff(caplog)
    sid, chat = seen["sid"], seen["chat"]
    lines = [line for line in seen["lines"] if f"conversation_id={sid}" in line]
    assert steps_of(lines, sid) == [
        "step=relay_started",
        "step=customer_turn_relayed",
        "step=agent_first_reply",
        "step=ended",
    ]
    for line in lines:
        assert line.startswith("handoff step=")
        assert f"chat_session_id={chat}" in line
    assert "outcome=ended_by_agent" in lines[-1]
    # The handoff's steps at INFO; the line per message at DEBUG, as Rasa's own.
    assert seen["levels"] == {
        "step=relay_started": "INFO",
        "step=customer_turn_relayed": "DEBUG",
        "step=agent_first_reply": "INFO",
        "step=ended": "INFO",
    }
    assert "message_number=2" in lines[1]
    assert not any(CUSTOMER_WORDS in line or "4711" in line for line in seen["lines"])


async def test_the_customer_s_text_is_logged_only_when_asked(caplog: Any) -> None:
    seen = await run_handoff(caplog, log_message_text=True)
    relayed = [line for line in seen["lines"] if "step=customer_turn_relayed" in line]
    assert relayed == [
        f"handoff step=customer_turn_relayed conversation_id={seen['sid']} "
        f"chat_session_id={seen['chat']} message_number=2 text={json.dumps(CUSTOMER_WORDS)}"
    ]


async def test_json_lines_are_one_object_each(caplog: Any) -> None:
    seen = await run_handoff(caplog, log_format="json")
    events = [json.loads(line) for line in seen["lines"]]
    ours = [event for event in events if event.get("conversation_id") == seen["sid"]]
    assert [event["step"] for event in ours] == [
        "relay_started",
        "customer_turn_relayed",
        "agent_first_reply",
        "ended",
    ]
    assert all(event["event"] == "handoff" for event in ours)
    assert all(event["chat_session_id"] == seen["chat"] for event in ours)
    assert ours[-1]["outcome"] == "ended_by_agent"
    assert "text" not in ours[1]
    assert isinstance(ours[2]["seconds"], float)


# key=value, a value quoted as a JSON string when it is not plain.
PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


@pytest.mark.parametrize(
    "conversation_id",
    ["plain-id", "two words", 'quote" step=forged', "line\nbreak step=ended", "tab\tand=equals"],
)
def test_a_conversation_id_cannot_fake_another_key_or_line(conversation_id: str) -> None:
    line = handoff_events.format_line(
        "relay_started", {"conversation_id": conversation_id, "chat_session_id": "rasa-1"}, "text"
    )
    assert "\n" not in line and line.startswith("handoff ")
    pairs = PAIR.findall(line[len("handoff ") :])
    assert " ".join(f"{key}={raw}" for key, raw in pairs) == line[len("handoff ") :]
    values = {key: json.loads(raw) if raw.startswith('"') else raw for key, raw in pairs}
    assert values == {
        "step": "relay_started",
        "conversation_id": conversation_id,
        "chat_session_id": "rasa-1",
    }


def test_an_unknown_log_format_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="text, json"):
        handoff_events.configure("xml", False)
