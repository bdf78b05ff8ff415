"""The trained example bot answers, offers a person and hands over as its rules say."""

import pathlib
import uuid
from typing import AsyncIterator, List

import pytest
import pytest_asyncio
from rasa.core.agent import Agent, load_agent


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(example_bot_model: pathlib.Path) -> AsyncIterator[Agent]:
    yield await load_agent(str(example_bot_model))


pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.rasa_cli]


async def say(agent: Agent, sender: str, text: str) -> List[str]:
    answers = await agent.handle_text(text, sender_id=sender)
    return [answer.get("text") or "" for answer in answers or []]


async def test_faq_questions_are_answered(agent: Agent) -> None:
    sender = uuid.uuid4().hex
    assert "open Monday to Friday" in " ".join(await say(agent, sender, "when are you open?"))
    assert "return anything within 30 days" in " ".join(
        await say(agent, sender, "how do I return something?")
    )


async def test_gibberish_gets_the_offer_of_a_person_with_buttons(agent: Agent) -> None:
    answers = await agent.handle_text("blorp fizz wat", sender_id=uuid.uuid4().hex)

    assert answers and "talk to one of my colleagues" in answers[0]["text"]
    assert [button["payload"] for button in answers[0]["buttons"]] == ["/affirm", "/deny"]


async def test_asking_for_a_person_asks_for_an_email_first(agent: Agent) -> None:
    sender = uuid.uuid4().hex
    answers = await say(agent, sender, "I want to talk to a person")

    assert answers == [
        "Before I connect you: at which email address can my colleagues reach you if the chat gets cut off?"
    ]
    tracker = await agent.tracker_store.retrieve(sender)
    assert tracker is not None and tracker.active_loop_name == "email_form"


async def test_the_end_of_the_human_chat_gets_its_own_words(agent: Agent) -> None:
    sender = uuid.uuid4().hex
    answers = await say(agent, sender, '/omnidesk_chat_ended{"handoff_outcome":"ended_by_agent"}')

    assert answers == [
        "Our colleague has closed the chat. I'm back: is there anything else I can help you with?"
    ]
    tracker = await agent.tracker_store.retrieve(sender)
    assert tracker is not None
    assert tracker.get_slot("handoff_active") is False
    assert tracker.get_slot("handoff_outcome") == "ended_by_agent"
