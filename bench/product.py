"""The product's paths, measured on real processes: the example bot, the connector, the sandbox.

Every figure is time seen by a client on loopback:

- a bot turn: POST /webhooks/callback/webhook returns once the bot has handled
  the turn (its replies already posted to the customer's backend);
- a relayed customer turn: the same POST for a conversation with an agent; it
  returns once the sandbox's notifyUserNewChatMessage has answered;
- an agent reply: POST {chatServer}/messageForCustomer, as Omnidesk sends it,
  until the customer's backend has the message.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import aiohttp

from bench.load import Figures, Turn, measure_paced, measure_sessions
from bench.receiver import Receiver
from connectors.omnidesk import handoff

ESCALATE_ACTION = "action_escalate_to_human"
# Connections a throughput run opens at once before it starts timing.
WARM_UP_AT_ONCE = 50
CHAT_SESSION_SLOT = "omnidesk_chat_session_id"
HANDOFF_ACTIVE_SLOT = "handoff_active"
# Turns a customer asks the example bot (rules and stories of data/); none escalates.
BOT_TURNS = [
    "hi",
    "what are your opening hours?",
    "how long does shipping take?",
    "can I return my order?",
    "thanks",
    "are you a bot?",
]
# The history a conversation has before it is handed over in bulk: two bot turns.
SHORT_HISTORY = 8


class BenchError(RuntimeError):
    """A step the measurements depend on did not do what it should; the message says which."""


@dataclass
class Conversation:
    sender: str
    chat_session_id: str
    sent: List[str] = field(default_factory=list)  # relayed texts, in the order sent


class Product:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        receiver: Receiver,
        rasa_url: str,
        sandbox_url: str,
        hookpoint_base: Callable[[str], str],
    ) -> None:
        self.http = http
        self.receiver = receiver
        self.rasa_url = rasa_url
        self.sandbox_url = sandbox_url
        # A chat's own chatServer (its token inside): never printed.
        self._hookpoint_base = hookpoint_base

    # -- the customer's side -------------------------------------------------------

    async def say(self, sender: str, text: str, rasa_url: Optional[str] = None) -> None:
        url = f"{rasa_url or self.rasa_url}/webhooks/callback/webhook"
        async with self.http.post(url, json={"sender": sender, "message": text}) as answer:
            body = await answer.read()
            if answer.status != 200:
                raise BenchError(
                    f"callback webhook answered {answer.status}: {body[:200]!r} for {sender}"
                )

    async def relay(self, conversation: Conversation, text: str) -> None:
        conversation.sent.append(text)
        await self.say(conversation.sender, text)

    # -- handing conversations over ----------------------------------------------------

    async def escalate_by_dialogue(self, sender: str) -> Conversation:
        """As a customer does it: ask for a person, give an email address."""
        await self.say(sender, "I want to talk to a person")
        await self.say(sender, "my email is jane@example.com")
        return await self._handed_over(sender, await self.tracker_slots(sender))

    async def escalate_by_action(self, sender: str) -> Conversation:
        """Run action_escalate_to_human through Rasa's HTTP API, on the callback output.

        The conversation must exist already (``seed_history``).

        The same path as a rule's escalation from the action on: the action server
        opens the chat in the sandbox and utters the control payload, which the
        wrapped callback output takes off the stream.
        """
        url = f"{self.rasa_url}/conversations/{sender}/execute"
        params = {"output_channel": "callback", "include_events": "NONE"}
        async with self.http.post(url, params=params, json={"name": ESCALATE_ACTION}) as answer:
            body = await answer.json(content_type=None)
            if answer.status != 200:
                raise BenchError(f"execute {ESCALATE_ACTION} for {sender}: {answer.status} {body}")
        # The tracker in execute's answer is the one from before the action: read it again.
        return await self._handed_over(sender, await self.tracker_slots(sender))

    async def _handed_over(self, sender: str, slots: Dict[str, Any]) -> Conversation:
        chat_session_id = slots.get(CHAT_SESSION_SLOT)
        if slots.get(HANDOFF_ACTIVE_SLOT) is not True or not chat_session_id:
            raise BenchError(
                f"conversation {sender} was not handed over: slots {HANDOFF_ACTIVE_SLOT}="
                f"{slots.get(HANDOFF_ACTIVE_SLOT)!r}, {CHAT_SESSION_SLOT}={chat_session_id!r}; "
                "see the action server's and Rasa's logs"
            )
        return Conversation(sender=sender, chat_session_id=str(chat_session_id))

    async def escalate_many(self, prefix: str, count: int, concurrency: int) -> List[Conversation]:
        senders = [f"{prefix}-{i}-{uuid.uuid4().hex[:8]}" for i in range(count)]
        done: List[Optional[Conversation]] = [None] * count
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                # Rasa's API runs actions only in a conversation it knows: two turns first.
                await self.seed_history(senders[i], SHORT_HISTORY)
                done[i] = await self.escalate_by_action(senders[i])

        await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
        return [c for c in done if c is not None]

    async def tracker_slots(self, sender: str) -> Dict[str, Any]:
        url = f"{self.rasa_url}/conversations/{sender}/tracker"
        async with self.http.get(url, params={"include_events": "NONE"}) as answer:
            body = await answer.json(content_type=None)
            if answer.status != 200:
                raise BenchError(f"tracker of {sender}: {answer.status} {body}")
        slots: Dict[str, Any] = body["slots"]
        return slots

    async def tracker_length(self, sender: str) -> int:
        url = f"{self.rasa_url}/conversations/{sender}/tracker"
        async with self.http.get(url, params={"include_events": "ALL"}) as answer:
            body = await answer.json(content_type=None)
        return len(body.get("events") or [])

    async def seed_history(self, sender: str, events: int) -> None:
        """Give a conversation ``events`` tracker events of ordinary bot turns, in one call.

        The user turns are as the wrapped callback channel writes them, with the
        connector's mark (the action opens chats only for turns that carry it).
        """
        now = time.time() - events * 0.01
        batch: List[Dict[str, Any]] = []
        turn = 0
        while len(batch) < events:
            at = now + len(batch) * 0.01
            batch.append(
                {
                    "event": "user",
                    "text": f"question {turn} about my order",
                    "parse_data": {
                        "intent": {"name": "ask_shipping", "confidence": 0.98},
                        "entities": [],
                        "text": f"question {turn} about my order",
                    },
                    "input_channel": "callback",
                    "metadata": {handoff.METADATA_KEY: {handoff.METADATA_WITH_AGENT: False}},
                    "timestamp": at,
                }
            )
            batch.append({"event": "action", "name": "utter_shipping", "timestamp": at})
            batch.append({"event": "bot", "text": "Orders ship in 1-2 days.", "timestamp": at})
            batch.append({"event": "action", "name": "action_listen", "timestamp": at})
            turn += 1
        url = f"{self.rasa_url}/conversations/{sender}/tracker/events"
        params = {"include_events": "NONE"}
        async with self.http.post(url, params=params, json=batch[:events]) as answer:
            body = await answer.read()
            if answer.status != 200:
                raise BenchError(f"seeding {sender}'s tracker: {answer.status} {body[:300]!r}")

    # -- the agent's side ------------------------------------------------------------

    async def agent_reply(self, conversation: Conversation, text: str) -> None:
        """Post as Omnidesk does and wait until the customer's backend has the message."""
        arrived = self.receiver.expect(conversation.sender, text)
        form = aiohttp.FormData()
        form.add_field("picture", "")
        form.add_field("name", "Anna")
        form.add_field("message", text)
        form.add_field("sessionID", conversation.chat_session_id)
        try:
            async with self.http.post(
                f"{self._hookpoint_base(conversation.chat_session_id)}/messageForCustomer",
                data=form,
            ) as answer:
                body = await answer.text()
                if answer.status != 200 or body != "ok":
                    raise BenchError(f"messageForCustomer answered {answer.status}: {body[:200]}")
            await asyncio.wait_for(arrived, timeout=10)
        finally:
            self.receiver.forget(conversation.sender, text)

    # -- what the sandbox recorded ------------------------------------------------------

    async def sandbox_chat(self, chat_session_id: str) -> Dict[str, Any]:
        url = f"{self.sandbox_url}/_sandbox/chats/{chat_session_id}"
        async with self.http.get(url) as answer:
            body: Dict[str, Any] = await answer.json(content_type=None)
            if answer.status != 200:
                raise BenchError(f"sandbox chat {chat_session_id}: {answer.status} {body}")
        return body

    async def check_delivery(self, conversations: List[Conversation]) -> Dict[str, Any]:
        """Every relayed text recorded once, in the order sent, numbers strictly increasing."""
        lost = reordered = numbering = 0
        examples: List[str] = []
        for conversation in conversations:
            chat = await self.sandbox_chat(conversation.chat_session_id)
            texts = [m["text"] for m in chat["messages"]][1:]  # 1 is the action's first message
            numbers = [m["number"] for m in chat["messages"]]
            if sorted(texts) != sorted(conversation.sent):
                lost += 1
                examples.append(f"{conversation.sender}: {len(texts)}/{len(conversation.sent)}")
            elif texts != conversation.sent:
                reordered += 1
                examples.append(f"{conversation.sender}: out of order")
            increasing = all(
                a is not None and b is not None and b > a for a, b in zip(numbers, numbers[1:])
            )
            if chat["numbering_problems"] or not increasing:
                numbering += 1
                examples.append(f"{conversation.sender}: {chat['numbering_problems'][:3]}")
        return {
            "chats": len(conversations),
            "messages": sum(len(c.sent) for c in conversations),
            "chats_with_lost_messages": lost,
            "chats_out_of_order": reordered,
            "chats_with_numbering_problems": numbering,
            "examples": examples[:5],
        }


# -- the measurements -------------------------------------------------------------------


def bot_turn(product: Product, rasa_url: str, tag: str, conversations: int = 25) -> Turn:
    """A bot turn of one of ``conversations`` ongoing conversations (rules of data/)."""

    def sender(i: int) -> str:
        return f"bot-{tag}-{i % conversations}"

    async def turn(i: int) -> None:
        await product.say(sender(i), BOT_TURNS[i % len(BOT_TURNS)], rasa_url=rasa_url)

    return turn


def relay_turn(product: Product, conversations: List[Conversation], tag: str) -> Turn:
    async def turn(i: int) -> None:
        await product.relay(conversations[i % len(conversations)], f"{tag} {i}")

    return turn


def agent_reply_turn(product: Product, conversations: List[Conversation]) -> Turn:
    async def turn(i: int) -> None:
        await product.agent_reply(conversations[i % len(conversations)], f"agent reply {i}")

    return turn


async def relayed_latency(
    product: Product, conversations: List[Conversation], count: int, interval: float, name: str
) -> Figures:
    return await measure_paced(
        name, relay_turn(product, conversations, name), count=count, interval=interval
    )


async def warm_relay(product: Product, conversations: List[Conversation], tag: str) -> None:
    """One turn in each conversation, so every conversation's connection is open.

    Opened WARM_UP_AT_ONCE at a time: 500 connects at once overflow the server's
    listen backlog (Sanic's default is 100), and a reset connection fails the run.
    """
    opening = asyncio.Semaphore(WARM_UP_AT_ONCE)

    async def warm_up(session: int) -> None:
        async with opening:
            await product.relay(conversations[session], f"{tag} {session}.-1")

    await asyncio.gather(*(warm_up(s) for s in range(len(conversations))))


async def relayed_sessions(
    product: Product, conversations: List[Conversation], turns_per_chat: int, tag: str
) -> Figures:
    """Every conversation at once, its turns one after the other (connections already open)."""

    async def turn(session: int, sequence: int) -> None:
        await product.relay(conversations[session], f"{tag} {session}.{sequence}")

    return await measure_sessions(
        f"relayed turn c={len(conversations)}",
        turn,
        sessions=len(conversations),
        turns_per_session=turns_per_chat,
    )


async def relayed_throughput(
    product: Product, conversations: List[Conversation], turns_per_chat: int, tag: str
) -> Figures:
    await warm_relay(product, conversations, tag)
    return await relayed_sessions(product, conversations, turns_per_chat, tag)
