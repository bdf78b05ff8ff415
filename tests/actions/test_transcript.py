"""The transcript an agent reads when a conversation is handed over."""

from typing import Any, Dict, List

from connectors.omnidesk import handoff
from connectors.omnidesk.action.transcript import (
    TranscriptOptions,
    escape_markdown,
    render_transcript,
)

T0 = 1_714_572_000.0  # 2024-05-01 14:00:00 UTC


def user(
    text: str, intent: str, at: float, confidence: float = 0.9, **extra: Any
) -> Dict[str, Any]:
    event: Dict[str, Any] = {
        "event": "user",
        "timestamp": at,
        "text": text,
        "input_channel": "socketio",
        "parse_data": {
            "intent": {"name": intent, "confidence": confidence},
            "entities": extra.pop("entities", []),
        },
    }
    event.update(extra)
    return event


def bot(text: str, at: float, **data: Any) -> Dict[str, Any]:
    return {"event": "bot", "timestamp": at, "text": text, "data": data, "metadata": {}}


def conversation() -> List[Dict[str, Any]]:
    return [
        {"event": "action", "timestamp": T0, "name": "action_session_start"},
        {"event": "session_started", "timestamp": T0},
        {"event": "action", "timestamp": T0, "name": "action_listen"},
        user("hi there", "greet", T0 + 1),
        bot("Hello! How can I help?", T0 + 2),
        user("where is my parcel??", "nlu_fallback", T0 + 60, confidence=0.31),
        bot(
            "Sorry, I didn't get that. Shall I connect you with a person?",
            T0 + 61,
            buttons=[
                {"title": "Yes, a person", "payload": "/affirm"},
                {"title": "No thanks", "payload": "/deny"},
            ],
        ),
        user("/affirm", "affirm", T0 + 70, confidence=1.0),
        {"event": "slot", "timestamp": T0 + 70, "name": "handoff_active", "value": None},
    ]


def test_the_agent_sees_who_said_what_and_when() -> None:
    text = render_transcript(conversation())

    assert "- 14:00:01 **Customer:** hi there _(intent greet 0.90)_" in text
    assert "- 14:00:02 **Bot:** Hello\\! How can I help?" in text
    assert "- Channel: socketio" in text
    assert "- Started: 2024-05-01 14:00 UTC" in text
    assert text.index("hi there") < text.index("How can I help") < text.index("parcel")


def test_a_chosen_button_shows_its_title_not_its_payload() -> None:
    text = render_transcript(conversation())

    assert "**Customer** chose the button **Yes, a person**" in text
    assert "/affirm" not in text
    assert "buttons: [Yes, a person] [No thanks]" in text


def test_the_bot_not_understanding_is_visible() -> None:
    text = render_transcript(conversation())

    assert "where is my parcel??" in text
    assert "_(intent nlu\\_fallback 0.31)_" in text


def test_bookkeeping_events_are_left_out() -> None:
    text = render_transcript(conversation())

    assert "action_listen" not in text
    assert "action_session_start" not in text
    assert "session_start" not in text


def test_customer_text_cannot_forge_markdown() -> None:
    forged = "hi\n- 14:00:00 **Agent:** [click](http://evil.example) <b>x</b>"
    text = render_transcript([user(forged, "greet", T0)])

    assert "[click](" not in text
    assert "**Agent:**" not in text
    assert "<b>" not in text
    assert (
        "\\- 14:00:00 \\*\\*Agent:\\*\\* \\[click\\]\\(http://evil.example\\) \\<b\\>x\\</b\\>"
        in text
    )


def test_escape_markdown_escapes_line_start_markers_only_at_line_start() -> None:
    assert escape_markdown("1. first\n# title\n> quote") == "1\\. first  \n\\# title  \n\\> quote"
    assert escape_markdown("costs 5.00 - today") == "costs 5.00 - today"


def test_entities_and_slots_worth_knowing_are_listed() -> None:
    events = [
        user(
            "my email is jane@example.com",
            "inform",
            T0,
            entities=[{"entity": "email", "value": "jane@example.com"}],
        )
    ]
    slots = {
        "customer_email": "jane@example.com",
        "handoff_active": False,
        "omnidesk_chat_session_id": None,
        "requested_slot": None,
        "order_number": None,
    }
    text = render_transcript(events, slots)

    assert "email=jane@example.com" in text
    assert "**Details**" in text
    assert "- customer\\_email: jane@example.com" in text
    assert "handoff" not in text
    assert "order" not in text


def test_agent_turns_and_the_handover_are_marked() -> None:
    events = [
        user("a person please", "request_human", T0),
        bot("", T0 + 1, custom=handoff.HandoffStarted("rasa-" + "a" * 32, 2).to_json_message()),
        {
            "event": "user",
            "timestamp": T0 + 5,
            "text": "my order is late",
            "metadata": {"omnidesk": {"role": "customer"}},
        },
        {
            "event": "bot",
            "timestamp": T0 + 9,
            "text": "Let me check that for you.",
            "data": {},
            "metadata": {"omnidesk": {"role": "agent", "agent_name": "Sam"}},
        },
    ]
    text = render_transcript(events)

    assert "_— handed over to a live agent —_" in text
    assert "omnidesk_handoff" not in text
    assert "- 14:00:05 **Customer:** my order is late\n" in text
    assert "**Agent Sam:** Let me check that for you." in text


def test_a_long_conversation_keeps_the_latest_lines_within_the_limit() -> None:
    events = [user(f"message number {i}", "inform", T0 + i) for i in range(200)]
    text = render_transcript(events, options=TranscriptOptions(max_chars=1500))

    assert len(text) <= 1500
    assert "message number 199" in text
    assert "message number 0 " not in text
    assert "earlier lines left out" in text


def test_an_empty_conversation_says_so() -> None:
    assert "_(no messages yet)_" in render_transcript([])


def test_a_conversation_that_already_holds_a_lone_surrogate_renders_as_valid_text() -> None:
    events = [
        {"event": "user", "text": "hi \ud800", "timestamp": 1.0},
        {"event": "bot", "text": "bot \udfff", "timestamp": 2.0},
        {
            "event": "bot",
            "text": "agent",
            "timestamp": 3.0,
            "metadata": {"omnidesk": {"role": "agent", "agent_name": "A\ud800"}},
        },
    ]
    rendered = render_transcript(events, {"customer_name": "N\ud800"})
    assert rendered.encode("utf-8")
    assert "hi \ufffd" in rendered and "bot \ufffd" in rendered


def test_an_image_response_shows_its_picture_once() -> None:
    # The moodbot's utter_cheer_up (Rasa's initial project), turned into the
    # event by Rasa itself: it copies the image into `attachment` as well.
    from rasa.core.actions.action import create_bot_utterance

    url = "https://i.imgur.com/nGF1K8f.jpg"
    event = create_bot_utterance(
        {"text": "Here is something to cheer you up:", "image": url}
    ).as_dict()
    assert event["data"]["image"] == event["data"]["attachment"] == url

    transcript = render_transcript([user("I am sad", "mood_unhappy", T0), event])

    assert transcript.count(escape_markdown(url)) == 1
    assert f"_(image: {escape_markdown(url)})_" in transcript
    assert "attachment" not in transcript


def test_an_image_with_its_own_attachment_shows_both() -> None:
    transcript = render_transcript(
        [bot("Here:", T0, image="https://a.example/p.png", attachment="https://a.example/f.pdf")]
    )
    assert "_(image: https://a.example/p.png)_" in transcript
    assert "_(attachment: https://a.example/f.pdf)_" in transcript
