"""The wrapped output passes on what the installed Rasa's OutputChannel has.

Rasa Pro's OutputChannel grew attach_tracker_state, hangup, streaming and more;
a wrapper that answered them itself would keep them from the customer's
channel. The same tests run on Rasa 3.6, where those calls are the wrapped
channel's own.
"""

from typing import Any, Dict, List, Tuple

from rasa.core.channels.channel import OutputChannel

from connectors.omnidesk.channel.customer import WrappedOutput
from connectors.omnidesk.handoff import HandoffStarted, new_chat_session_id


class RecordingOutput(OutputChannel):  # type: ignore[misc]
    """A customer channel's output that notes every call it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Tuple[str, Any]] = []
        self.tracker_state: Any = None

    @classmethod
    def name(cls) -> str:
        return "recording"

    @property
    def supports_streaming(self) -> bool:
        return True

    def attach_tracker_state(self, tracker: Any) -> None:
        self.calls.append(("attach_tracker_state", tracker))
        self.tracker_state = {"sender_id": tracker}

    async def hangup(self, recipient_id: str, **kwargs: Any) -> None:
        self.calls.append(("hangup", recipient_id))

    async def send_response_chunk(self, recipient_id: str, chunk: str, **kwargs: Any) -> None:
        self.calls.append(("chunk", chunk))

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        self.calls.append(("text", text))


def wrapped() -> Tuple[WrappedOutput, RecordingOutput, List[HandoffStarted]]:
    inner = RecordingOutput()
    started: List[HandoffStarted] = []

    async def on_started(
        conversation_id: str, channel: str, handoff: HandoffStarted, route: Any = None
    ) -> bool:
        started.append(handoff)
        return True  # registered

    return WrappedOutput(inner, "recording", on_started), inner, started


def test_the_wrapper_is_an_output_channel_named_as_the_wrapped_one() -> None:
    output, _, _ = wrapped()
    assert isinstance(output, OutputChannel)
    assert output.name() == "recording"


def test_the_tracker_reaches_the_wrapped_output_and_its_state_shows_on_the_wrapper() -> None:
    output, inner, _ = wrapped()
    output.attach_tracker_state("conversation-1")
    assert inner.calls == [("attach_tracker_state", "conversation-1")]
    assert output.tracker_state == {"sender_id": "conversation-1"}


async def test_hangup_and_streaming_reach_the_wrapped_output() -> None:
    output, inner, _ = wrapped()
    assert output.supports_streaming is True
    await output.send_response_chunk("c-1", "Hel")
    await output.hangup("c-1")
    assert inner.calls == [("chunk", "Hel"), ("hangup", "c-1")]


async def test_the_control_payload_is_still_taken_off_and_text_passes() -> None:
    output, inner, started = wrapped()
    handoff = HandoffStarted(chat_session_id=new_chat_session_id(), next_message_number=2)
    message: Dict[str, Any] = {"text": "Connecting you.", "custom": handoff.to_json_message()}
    await output.send_response("c-1", message)
    assert inner.calls == [("text", "Connecting you.")]
    assert started == [handoff]
