"""Thirty customers on two replicas, an agent writing to each, a reconnect and a SIGKILL.

The cluster test of issue 10, on the session's cluster (tests/cluster/conftest.py):
two ``rasa run`` replicas with the connector, Redis, PostgreSQL, nginx and the
sandbox as Omnidesk, calling the hookpoints through nginx.

- 30 customers: socket.io widgets connected to replica A or B directly
  (python-socketio, long polling, ``session_request`` with a session id, as the
  example bot's credentials.yml configures socketio with session persistence),
  and callback customers whose app backend posts through nginx.
- Each greets the bot, asks for a person and gives an email address, then says
  20 things to the agent while the agent writes 20 messages back (the sandbox's
  agent desk calls the hookpoints through nginx, round-robin over the replicas).
  A bounded number of customers escalate at once and a bounded number of calls
  are in flight at once.
- A socket.io customer waits for each of its turns to be taken (the socket.io
  acknowledgement, sent once Rasa's handler returned) before saying the next,
  as a callback backend waits for its post's answer: a person types one message
  after the other, so the order they said things in is the order to keep.
- Faults: in the first half, one socket.io customer leaves cleanly, the agent
  writes meanwhile, and it comes back on the other replica with the same session
  id while the agent goes on writing. At the half, once everything sent so far has
  arrived (nothing in flight either way: a turn or a hookpoint call cut off inside
  the dying process is for its sender to send again, and no one can say whether it
  was taken), replica A is killed with SIGKILL. The agent goes on writing at once;
  A's socket.io customers see their socket die and connect to B a second later
  (socket.io-client's default reconnection delay), so some of the agent's messages
  are stored while they have no socket at all. Callback customers and the
  hookpoints go on through nginx, which routes around A. After the run A is
  started again, so the session's cluster is whole for the tests after this one.

Pass: every customer turn reaches the sandbox exactly once, in order, with
messageNumber 1, 2, 3... (the chat's first message is the handoff's; past
Omnidesk's cap of 50 a message goes without a number); every agent message
reaches its customer exactly once, in order; each tracker in PostgreSQL holds every
relayed turn exactly once, in order (events whose metadata has
``{"omnidesk": {"role": ...}}``), followed by the intent ``omnidesk_chat_ended``.
The counts are printed (and written to artifacts/cluster/thirty-customers.json)
whether the test passes or not, so CI's log shows them.
"""

import asyncio
import bisect
import contextlib
import json
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import aiohttp
import pytest
import socketio

from connectors.omnidesk import rules
from connectors.omnidesk.tasks import stop_all
from tests.cluster.cluster import Cluster, Replica
from tests.cluster.conftest import ARTIFACTS
from tests.e2e.people import CallbackCustomer, Desk, RasaApi, new_conversation_id
from tests.e2e.receiver import CallbackReceiver
from tests.e2e.test_journey import CLOSED_BY_AGENT, CONNECTED, chat_session_of, escalate

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

CUSTOMERS = 30
SOCKET_CUSTOMERS = 12  # half on each replica; the rest are callback customers
TURNS = 20  # each way, per customer
HALF = TURNS // 2  # replica A is killed after this many turns each way
ESCALATING_AT_ONCE = 8
CALLS_AT_ONCE = 16  # customer turns and agent messages in flight, all customers together
PACE = 0.1  # seconds between one customer's turns, and between the agent's messages to it
SETTLE = 25.0  # longest wait for what was sent to arrive, at the half and at the end
RUN_BUDGET = 200.0  # the whole run, restart of replica A not included
ACK_TIMEOUT = 60.0

# The roaming customer: leaves after its turn ROAM_LEAVE_AFTER; the agent writes
# ROAM_WHILE_AWAY messages meanwhile, and it comes back on the other replica while
# the agent goes on writing.
ROAM_LEAVE_AFTER = 3
ROAM_WHILE_AWAY = 3
# How long a widget whose socket died waits before connecting again: socket.io-client's
# default reconnectionDelay. The agent writes meanwhile.
RECONNECT_DELAY = 1.0

CUSTOMER_TURN = re.compile(r"^question (\d+) from (\S+)$")
AGENT_MESSAGE = re.compile(r"answer (\d+) for (\S+)$")
CHAT_ENDED_INTENT = "omnidesk_chat_ended"
NEW_MESSAGE_CALL = "notifyUserNewChatMessage"  # the sandbox's name for the endpoint


def customer_text(number: int, label: str) -> str:
    return f"question {number} from {label}"


def agent_text(number: int, label: str) -> str:
    return f"answer {number} for {label}"


def expected_message_number(position: int) -> Optional[int]:
    """The messageNumber of a chat's ``position``-th message (1-based), as Omnidesk wants it."""
    return position if position <= rules.MESSAGE_NUMBER_MAX else None


def numbers_of(
    pattern: "re.Pattern[str]",
    texts: List[str],
    label: str,
    misrouted: Optional[List[str]] = None,
    where: str = "",
) -> List[int]:
    """The numbers of ``label``'s messages among ``texts``, in order.

    Another customer's message found there goes into ``misrouted``.
    """
    found = []
    for text in texts:
        match = pattern.search(text)
        if match is None:
            continue
        if match.group(2) == label:
            found.append(int(match.group(1)))
        elif misrouted is not None:
            misrouted.append(f"{label} {where}: {text!r}")
    return found


def beyond_the_cap(problem: str) -> bool:
    """The sandbox's "message N has no messageNumber" for an N past Omnidesk's cap."""
    found = re.fullmatch(r"message (\d+) has no messageNumber", problem)
    return found is not None and int(found.group(1)) > rules.MESSAGE_NUMBER_MAX


# -- the socket.io customer who may move between replicas ------------------------------------


class RoamingSocketCustomer:
    """A socket.io widget with session persistence that can reconnect to another replica.

    What every connection of it received goes into one list, so a message that
    arrives twice (once per connection) is counted twice.
    """

    channel = "socketio"

    def __init__(self, replica: Replica) -> None:
        self.id = new_conversation_id("cluster-socket")
        self.replica = replica
        self.messages: List[Dict[str, Any]] = []
        self.sio: Optional[socketio.AsyncClient] = None
        self.connections = 0

    def _client(self) -> Tuple[socketio.AsyncClient, asyncio.Event]:
        client = socketio.AsyncClient(reconnection=False)
        confirmed = asyncio.Event()

        async def bot_uttered(data: Any) -> None:
            self.messages.append(data if isinstance(data, dict) else {"text": str(data)})

        async def session_confirm(_: Any) -> None:
            confirmed.set()

        client.on("bot_uttered", bot_uttered)
        client.on("session_confirm", session_confirm)
        return client, confirmed

    async def connect(self, replica: Optional[Replica] = None) -> None:
        """Connect (to ``replica``, or the current one) and ask for this customer's session."""
        if replica is not None:
            self.replica = replica
        client, confirmed = self._client()
        self.sio = client
        # Long polling: python-engineio's websocket client needs a newer aiohttp than
        # Rasa 3.6 pins (as tests/e2e/people.py says).
        await client.connect(
            self.replica.url, transports=["polling"], socketio_path="/socket.io", wait_timeout=10
        )
        await client.emit("session_request", {"session_id": self.id})
        await asyncio.wait_for(confirmed.wait(), timeout=10)
        self.connections += 1

    async def leave(self) -> None:
        """Close the socket the way a widget does on a reload: the server is told."""
        client = self.sio
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), timeout=5)
        except (asyncio.TimeoutError, Exception):
            await self.drop()

    async def drop(self) -> None:
        """Forget the socket without a goodbye (its server is gone)."""
        client = self.sio
        if client is None:
            return
        eio = client.eio
        with contextlib.suppress(Exception):
            await eio.disconnect(abort=True)
        tasks = [t for t in (eio.read_loop_task, eio.write_loop_task) if t is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            await stop_all(pending)

    async def wait_disconnected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.sio is not None and self.sio.connected:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def say(self, text: str) -> None:
        """Emit the turn and wait for the server's acknowledgement (its handler returned)."""
        assert self.sio is not None
        await self.sio.call(
            "user_uttered", {"message": text, "session_id": self.id}, timeout=ACK_TIMEOUT
        )

    def texts(self) -> List[str]:
        return [m["text"] for m in self.messages if m.get("text")]

    def agent_messages(self) -> List[Dict[str, Any]]:
        return [m for m in self.messages if m.get("agent")]

    async def wait_for_text(self, fragment: str, after: int = 0, timeout: float = 30.0) -> str:
        found = await wait_until(
            lambda: next((t for t in self.texts()[after:] if fragment in t), None),
            timeout,
        )
        if found is None:
            raise AssertionError(f"socket.io customer {self.id}: no {fragment!r} in {timeout} s")
        return str(found)


Customer = Union[RoamingSocketCustomer, CallbackCustomer]


async def wait_until(condition: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """``condition()`` once truthy, or its last value when ``timeout`` ran out (no raise)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)


async def wait_callback_text(customer: CallbackCustomer, fragment: str, after: int) -> None:
    found = await wait_until(
        lambda: any(fragment in t for t in customer.texts()[after:]), 30.0, every=0.2
    )
    if not found:
        raise AssertionError(f"callback customer {customer.id}: no {fragment!r} in 30 s")


# -- one customer's part in the run ---------------------------------------------------------------


@dataclass
class Person:
    label: str
    customer: Customer
    chat_id: Optional[str] = None
    said: List[int] = field(default_factory=list)  # customer turns taken, in order
    sent: List[int] = field(default_factory=list)  # agent messages the hookpoint took, in order
    sent_after_kill: List[int] = field(default_factory=list)
    away: bool = False  # a socket.io customer with no socket now
    sent_while_away: List[int] = field(default_factory=list)
    refused: List[str] = field(default_factory=list)  # hookpoint answers other than 200
    errors: List[str] = field(default_factory=list)
    moves: List[str] = field(default_factory=list)
    ended: Optional[int] = None  # endSession's hookpoint status

    @property
    def on_socket(self) -> bool:
        return isinstance(self.customer, RoamingSocketCustomer)

    def agent_numbers(self, misrouted: Optional[List[str]] = None) -> List[int]:
        """The agent messages this customer received, as numbers, in arrival order."""
        texts = [str(m.get("text") or "") for m in self.customer.agent_messages()]
        return numbers_of(AGENT_MESSAGE, texts, self.label, misrouted, "at the customer")

    def note(self, what: str, error: BaseException) -> None:
        self.errors.append(f"{what}: {type(error).__name__}: {error}"[:300])


@dataclass
class Tally:
    """What arrived of what was sent, for one stream of numbered messages."""

    expected: int = 0
    arrived: int = 0  # distinct expected messages that arrived
    duplicates: int = 0
    lost: int = 0
    out_of_order: int = 0
    unexpected: int = 0  # arrived but never sent (or not taken)

    def add(self, expected: List[int], got: List[int]) -> None:
        wanted = set(expected)
        seen: List[int] = []
        for number in got:
            if number in seen:
                self.duplicates += 1
            else:
                seen.append(number)
        self.expected += len(expected)
        self.arrived += len(wanted & set(seen))
        self.lost += len(wanted - set(seen))
        self.unexpected += len(set(seen) - wanted)
        self.out_of_order += disorder([n for n in seen if n in wanted])

    @property
    def clean(self) -> bool:
        return self.arrived == self.expected and not (
            self.duplicates or self.lost or self.out_of_order or self.unexpected
        )

    def as_dict(self) -> Dict[str, int]:
        return {
            "expected": self.expected,
            "arrived": self.arrived,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "out_of_order": self.out_of_order,
            "unexpected": self.unexpected,
        }


def disorder(numbers: List[int]) -> int:
    """How many of ``numbers`` are out of place: all but a longest increasing run of them."""
    tails: List[int] = []
    for number in numbers:
        at = bisect.bisect_left(tails, number)
        if at == len(tails):
            tails.append(number)
        else:
            tails[at] = number
    return len(numbers) - len(tails)


def omnidesk_role(event: Dict[str, Any]) -> Any:
    return ((event.get("metadata") or {}).get("omnidesk") or {}).get("role")


def is_chat_end(event: Dict[str, Any]) -> bool:
    intent = (event.get("parse_data") or {}).get("intent") or {}
    return event.get("event") == "user" and intent.get("name") == CHAT_ENDED_INTENT


# -- the run ---------------------------------------------------------------------------------------


class Run:
    def __init__(
        self,
        cluster: Cluster,
        desk: Desk,
        http: aiohttp.ClientSession,
        inbox: CallbackReceiver,
    ) -> None:
        self.cluster = cluster
        self.desk = desk
        self.http = http
        replica_a, replica_b = cluster.replica("rasa-a"), cluster.replica("rasa-b")
        self.replica_a, self.replica_b = replica_a, replica_b
        self.people: List[Person] = []
        for index in range(CUSTOMERS):
            customer: Customer
            if index < SOCKET_CUSTOMERS:
                replica = (replica_a, replica_b)[index % 2]
                customer = RoamingSocketCustomer(replica)
                label = f"s{index:02d}-{replica.name[-1]}"
            else:
                customer = CallbackCustomer(cluster.proxy_url, http, inbox)
                label = f"c{index:02d}"
            self.people.append(Person(label=label, customer=customer))
        # The roaming customer starts on B, moves to A in the first half, and is on A
        # when A is killed.
        self.roamer = next(
            p
            for p in self.people
            if isinstance(p.customer, RoamingSocketCustomer) and p.customer.replica is replica_b
        )
        self.roamer_away = asyncio.Event()
        self.roamer_written = asyncio.Event()
        self.calls = asyncio.Semaphore(CALLS_AT_ONCE)
        self.killed_at: Optional[float] = None
        self.reconnect_seconds: List[float] = []
        self.phases: Dict[str, float] = {}
        self.began = time.monotonic()
        self.tracker_events: Dict[str, List[Dict[str, Any]]] = {}
        self.sandbox_chats: Dict[str, Dict[str, Any]] = {}
        self.sandbox_calls: List[Dict[str, Any]] = []

    def _phase(self, name: str) -> None:
        self.phases[name] = round(time.monotonic() - self.began, 1)

    # -- the steps ---------------------------------------------------------------------

    async def everything(self) -> None:
        escalating = asyncio.Semaphore(ESCALATING_AT_ONCE)
        await asyncio.gather(*(self.escalate(p, escalating) for p in self.people))
        self._phase("escalated")
        await asyncio.gather(*(self.half(p, 1, HALF) for p in self.people))
        await self.settle()
        self._phase("first half")
        # Nothing in flight either way now: replica A dies, the agent writes on.
        await asyncio.to_thread(self.cluster.kill_replica, "rasa-a", signal.SIGKILL)
        self.killed_at = time.monotonic()
        for person in self.people:
            customer = person.customer
            if isinstance(customer, RoamingSocketCustomer) and customer.replica is self.replica_a:
                person.away = True
        self._phase("replica A killed")
        await asyncio.gather(*(self.half(p, HALF + 1, TURNS, after_kill=True) for p in self.people))
        await self.settle()
        self._phase("second half")
        await asyncio.gather(*(self.end(p) for p in self.people))
        self._phase("chats ended")

    async def escalate(self, person: Person, escalating: asyncio.Semaphore) -> None:
        customer = person.customer
        async with escalating:
            try:
                if isinstance(customer, RoamingSocketCustomer):
                    await customer.connect()
                await escalate(customer, f"{person.label}.{customer.id[-8:]}@example.com")
                await customer.wait_for_text(CONNECTED)
                rasa = RasaApi(self.replica_b.url, self.http)
                person.chat_id = await chat_session_of(rasa, customer.id)
            except Exception as error:
                person.note("escalation", error)

    async def half(self, person: Person, first: int, last: int, after_kill: bool = False) -> None:
        if person.chat_id is None:
            return
        await asyncio.gather(
            self.customer_side(person, first, last, after_kill),
            self.agent_side(person, first, last, after_kill),
        )

    async def customer_side(self, person: Person, first: int, last: int, after_kill: bool) -> None:
        customer = person.customer
        try:
            if (
                after_kill
                and isinstance(customer, RoamingSocketCustomer)
                and customer.replica is self.replica_a
            ):
                await self.reconnect_after_kill(person, customer)
            for number in range(first, last + 1):
                async with self.calls:
                    await customer.say(customer_text(number, person.label))
                person.said.append(number)
                if person is self.roamer and number == ROAM_LEAVE_AFTER:
                    await self.roam(person)
                await asyncio.sleep(PACE)
        except Exception as error:
            person.note(f"customer turn {len(person.said) + 1}", error)

    async def roam(self, person: Person) -> None:
        """Leave, let the agent write, come back on the other replica while it writes on."""
        customer = person.customer
        assert isinstance(customer, RoamingSocketCustomer)
        came_from = customer.replica
        await customer.leave()
        person.away = True
        self.roamer_away.set()
        await asyncio.wait_for(self.roamer_written.wait(), timeout=SETTLE)
        other = self.replica_a if came_from is self.replica_b else self.replica_b
        await customer.connect(other)
        person.away = False
        person.moves.append(f"{came_from.name} -> {other.name} (left cleanly)")

    async def reconnect_after_kill(self, person: Person, customer: RoamingSocketCustomer) -> None:
        """As a widget: see the socket die, connect to the replica that is left."""
        await customer.wait_disconnected(timeout=15)
        await customer.drop()
        await asyncio.sleep(RECONNECT_DELAY)
        await customer.connect(self.replica_b)
        person.away = False
        assert self.killed_at is not None
        self.reconnect_seconds.append(time.monotonic() - self.killed_at)
        person.moves.append("rasa-a -> rasa-b (rasa-a killed)")

    async def agent_side(self, person: Person, first: int, last: int, after_kill: bool) -> None:
        assert person.chat_id is not None
        for number in range(first, last + 1):
            if person is self.roamer and not after_kill:
                if number == ROAM_LEAVE_AFTER + 1:
                    # Write only once the customer has gone.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.roamer_away.wait(), timeout=SETTLE)
                if number == ROAM_LEAVE_AFTER + 1 + ROAM_WHILE_AWAY:
                    # Written while away; the customer comes back while the agent goes on.
                    self.roamer_written.set()
            if await self.agent_writes(person, number):
                if person.away:
                    person.sent_while_away.append(number)
                if after_kill:
                    person.sent_after_kill.append(number)
            await asyncio.sleep(PACE)
        if person is self.roamer and not after_kill:
            self.roamer_written.set()

    async def agent_writes(self, person: Person, number: int) -> bool:
        """The agent's message through the sandbox's desk; True when the hookpoint took it.

        A refusal (not 200) is what Omnidesk would show the agent; the agent sends
        it again, up to three times.
        """
        assert person.chat_id is not None
        for _ in range(3):
            try:
                async with self.calls:
                    answer = await self.desk.reply(
                        person.chat_id, agent_text(number, person.label), name="Anna"
                    )
            except Exception as error:
                person.note(f"agent message {number}", error)
                return False
            if answer.get("hookpoint_status") == 200:
                person.sent.append(number)
                return True
            person.refused.append(
                f"{number}: {answer.get('hookpoint_status')} {answer.get('hookpoint_error')}"
            )
            await asyncio.sleep(0.5)
        return False

    async def settle(self) -> None:
        """Wait (bounded) until every turn and agent message sent so far has arrived."""

        async def arrived() -> bool:
            for person in self.people:
                if person.chat_id is None:
                    continue
                if not set(person.sent) <= set(person.agent_numbers()):
                    return False
            for person in self.people:
                if person.chat_id is None:
                    continue
                chat = await self.desk.chat(person.chat_id)
                if len(chat["messages"]) < 1 + len(person.said):
                    return False
            return True

        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            if await arrived():
                break
            await asyncio.sleep(0.25)
        # Let the last relayed turns' records land before anything is killed or ended.
        await asyncio.sleep(0.5)

    async def end(self, person: Person) -> None:
        if person.chat_id is None:
            return
        customer = person.customer
        before = len(customer.texts())
        try:
            async with self.calls:
                person.ended = (await self.desk.end(person.chat_id)).get("hookpoint_status")
            if isinstance(customer, RoamingSocketCustomer):
                await customer.wait_for_text(CLOSED_BY_AGENT, after=before)
            else:
                await wait_callback_text(customer, CLOSED_BY_AGENT, before)
        except Exception as error:
            person.note("end of chat", error)

    # -- what arrived ------------------------------------------------------------------

    async def collect(self) -> None:
        """The sandbox's chats and the trackers, the latter once each chat's end is in."""
        for person in self.people:
            if person.chat_id is not None:
                with contextlib.suppress(Exception):
                    self.sandbox_chats[person.label] = await self.desk.chat(person.chat_id)

        def read_trackers() -> bool:
            for person in self.people:
                if person.chat_id is None:
                    continue
                if any(is_chat_end(e) for e in self.tracker_events.get(person.label, [])):
                    continue
                try:
                    self.tracker_events[person.label] = self.cluster.postgres.events(
                        person.customer.id
                    )
                except Exception as error:
                    person.note("reading the tracker", error)
            return all(
                any(is_chat_end(e) for e in self.tracker_events.get(p.label, []))
                for p in self.people
                if p.chat_id is not None
            )

        with contextlib.suppress(Exception):
            async with self.http.get(
                f"{self.desk.url}/_sandbox/calls", params={"endpoint": NEW_MESSAGE_CALL}
            ) as answer:
                self.sandbox_calls = list((await answer.json())["calls"])

        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(read_trackers) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    def counts(self) -> Dict[str, Any]:
        to_sandbox, to_customers = Tally(), Tally()
        tracker_customer, tracker_agent = Tally(), Tally()
        after_kill, while_away = Tally(), Tally()
        numbering: List[str] = []
        tracker_end: List[str] = []
        misrouted: List[str] = []  # one customer's message in another's chat
        for person in self.people:
            chat = self.sandbox_chats.get(person.label)
            if chat is not None:
                for position, message in enumerate(chat["messages"], start=1):
                    if message["number"] != expected_message_number(position):
                        numbering.append(
                            f"{person.label}: message {position} numbered {message['number']}"
                        )
                turns = numbers_of(
                    CUSTOMER_TURN,
                    [m["text"] for m in chat["messages"]],
                    person.label,
                    misrouted,
                    "at the sandbox",
                )
                # The sandbox flags every message without a number; past the cap
                # that is what Omnidesk wants (checked above), not a problem.
                numbering += [
                    f"{person.label}: {problem}"
                    for problem in chat["numbering_problems"]
                    if not beyond_the_cap(problem)
                ]
                to_sandbox.add(person.said, turns)
            elif person.said:
                to_sandbox.add(person.said, [])
            got = person.agent_numbers(misrouted)
            to_customers.add(person.sent, got)
            after_kill.add(person.sent_after_kill, [n for n in got if n in person.sent_after_kill])
            while_away.add(person.sent_while_away, [n for n in got if n in person.sent_while_away])

            events = self.tracker_events.get(person.label, [])
            relayed = [(i, e) for i, e in enumerate(events) if omnidesk_role(e)]
            said = numbers_of(
                CUSTOMER_TURN,
                [
                    str(e.get("text") or "")
                    for _, e in relayed
                    if e["event"] == "user" and omnidesk_role(e) == "customer"
                ],
                person.label,
                misrouted,
                "in the tracker",
            )
            written = numbers_of(
                AGENT_MESSAGE,
                [
                    str(e.get("text") or "")
                    for _, e in relayed
                    if e["event"] == "bot" and omnidesk_role(e) == "agent"
                ],
                person.label,
                misrouted,
                "in the tracker",
            )
            tracker_customer.add(person.said, said)
            tracker_agent.add(person.sent, written)
            if person.chat_id is not None:
                ends = [i for i, e in enumerate(events) if is_chat_end(e)]
                if not ends:
                    tracker_end.append(f"{person.label}: no {CHAT_ENDED_INTENT}")
                elif relayed and relayed[-1][0] > ends[0]:
                    tracker_end.append(f"{person.label}: relayed turns after the chat's end")

        # The calls as the sandbox recorded them: customer turn k is the chat's
        # message k + 1 (the handoff's own message is 1), so it carries k + 1 up to
        # Omnidesk's cap and no messageNumber past it.
        refused_calls = 0
        numbered_calls = 0
        by_chat = {p.chat_id: p for p in self.people if p.chat_id is not None}
        for call in self.sandbox_calls:
            fields = call.get("fields") or {}
            person = by_chat.get(fields.get("chatSessionID"))
            if person is None:
                continue
            if call.get("status") != 200:
                refused_calls += 1
                continue
            match = CUSTOMER_TURN.match(str(fields.get("message") or ""))
            if not match or match.group(2) != person.label:
                continue
            numbered_calls += 1
            raw = fields.get("messageNumber")
            sent_number = int(raw) if raw not in (None, "") else None
            wanted = expected_message_number(int(match.group(1)) + 1)
            if sent_number != wanted:
                numbering.append(
                    f"{person.label}: turn {match.group(1)} sent with messageNumber {raw!r}"
                )

        sockets = [p for p in self.people if p.on_socket]
        return {
            "customers": len(self.people),
            "socket.io customers": {
                "first on A": sum(1 for p in sockets if p.label.endswith("-a")),
                "first on B": sum(1 for p in sockets if p.label.endswith("-b")),
            },
            "callback customers": len(self.people) - len(sockets),
            "escalated": sum(1 for p in self.people if p.chat_id is not None),
            "customer turns to the sandbox": to_sandbox.as_dict(),
            "numbering problems": numbering,
            "sandbox calls: customer turns checked": numbered_calls,
            "sandbox calls refused": refused_calls,
            "agent messages to customers": to_customers.as_dict(),
            "agent messages after the kill": after_kill.as_dict(),
            "agent messages while the customer had no socket": while_away.as_dict(),
            "agent messages refused by the hookpoint": sum(len(p.refused) for p in self.people),
            "tracker: customer turns": tracker_customer.as_dict(),
            "tracker: agent messages": tracker_agent.as_dict(),
            "tracker: end of chat problems": tracker_end,
            "messages in another customer's chat": misrouted,
            "roaming customer": {
                "label": self.roamer.label,
                "moves": self.roamer.moves,
                "agent messages while it had no socket": self.roamer.sent_while_away,
            },
            "reconnected after the kill": len(self.reconnect_seconds),
            "slowest reconnect after the kill (s)": round(
                max(self.reconnect_seconds, default=0), 2
            ),
            "chats ended with 200": sum(1 for p in self.people if p.ended == 200),
            "errors": {p.label: p.errors for p in self.people if p.errors},
            "refusals": {p.label: p.refused for p in self.people if p.refused},
            "phases (s)": self.phases,
            "seconds": round(time.monotonic() - self.began, 1),
            "_tallies": {
                "sandbox": to_sandbox,
                "customers": to_customers,
                "tracker customer": tracker_customer,
                "tracker agent": tracker_agent,
                "while away": while_away,
            },
        }

    async def close(self) -> None:
        for person in self.people:
            if isinstance(person.customer, RoamingSocketCustomer):
                with contextlib.suppress(Exception):
                    await person.customer.drop()


def report(counts: Dict[str, Any], redis: str = "one Redis") -> str:
    shown = {k: v for k, v in counts.items() if not k.startswith("_")}
    lines = [
        "",
        f"== cluster test: 30 customers, 2 replicas, a reconnect and a SIGKILL ({redis}) ==",
    ]
    for key, value in shown.items():
        if isinstance(value, dict) and key not in ("errors", "refusals"):
            inner = ", ".join(f"{k} {v}" for k, v in value.items())
            lines.append(f"{key}: {inner}")
        elif isinstance(value, (list, dict)):
            if value:
                lines.append(f"{key}: {json.dumps(value)[:2000]}")
            else:
                lines.append(f"{key}: none")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


async def guarded(step: Awaitable[Any], budget: float) -> Optional[str]:
    try:
        await asyncio.wait_for(step, timeout=budget)
    except asyncio.TimeoutError:
        return f"the run did not finish within {budget:.0f} s"
    return None


@pytest.mark.timeout(420)
async def test_thirty_customers_on_two_replicas_lose_nothing_through_a_reconnect_and_a_sigkill(
    cluster: Cluster,
    desk: Desk,
    http: aiohttp.ClientSession,
    callback_inbox: CallbackReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await thirty_customers(
        cluster, desk, http, callback_inbox, capsys, "one Redis", "thirty-customers.json"
    )


async def thirty_customers(
    cluster: Cluster,
    desk: Desk,
    http: aiohttp.ClientSession,
    callback_inbox: CallbackReceiver,
    capsys: pytest.CaptureFixture[str],
    redis: str,
    artifact: str,
) -> None:
    """The run, its report (printed and written to ``artifact``) and what it must show."""
    run = Run(cluster, desk, http, callback_inbox)
    try:
        problem = await guarded(run.everything(), RUN_BUDGET)
        await run.collect()
    finally:
        await run.close()
        if not cluster.replica("rasa-a").process.alive:
            # The session's cluster stays whole for the tests after this one.
            await asyncio.to_thread(cluster.restart_replica, "rasa-a")
    counts = run.counts()
    text = report(counts, redis)
    with capsys.disabled():
        print(text, flush=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / artifact).write_text(
        json.dumps({k: v for k, v in counts.items() if not k.startswith("_")}, indent=2) + "\n"
    )

    tallies = counts["_tallies"]
    assert problem is None, text
    assert counts["escalated"] == CUSTOMERS, text
    assert not counts["errors"], text
    assert counts["agent messages refused by the hookpoint"] == 0, text
    assert tallies["sandbox"].expected == CUSTOMERS * TURNS and tallies["sandbox"].clean, text
    assert counts["numbering problems"] == [], text
    assert counts["sandbox calls refused"] == 0, text
    assert tallies["customers"].expected == CUSTOMERS * TURNS and tallies["customers"].clean, text
    assert tallies["tracker customer"].clean and tallies["tracker agent"].clean, text
    assert counts["tracker: end of chat problems"] == [], text
    assert counts["messages in another customer's chat"] == [], text
    assert counts["chats ended with 200"] == CUSTOMERS, text
    roamer_away = counts["roaming customer"]["agent messages while it had no socket"]
    assert len(roamer_away) >= ROAM_WHILE_AWAY, text
    # The agent wrote to A's customers before they were back (the faults were real).
    assert tallies["while away"].expected > len(roamer_away), text
    # A's own socket.io customers, and the roaming one, who was on A by then.
    assert counts["reconnected after the kill"] == SOCKET_CUSTOMERS // 2 + 1, text
