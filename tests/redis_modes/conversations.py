"""Customers and agents talking through channel servers that share one Redis deployment,
and what arrived of what was taken: lost, duplicated, reordered, each way.

``converse`` hands a few callback customers to agents on the sandbox, then each
customer says ``turns`` things while the agent writes as many back, one after
the other as people type. Each turn goes to the next instance in turn, and so
does each of the agent's hookpoint calls (as a load balancer spreads them). A
turn answered other than 200, or a hookpoint call answered other than ``ok``,
was not taken: it is sent again, as a backend and Omnidesk would, until
``retry_for`` runs out. ``midway`` (a fault: a master killed) starts, in the
background, once the first customer is half way; the talking goes on meanwhile.

Counted only what was taken: a customer turn the webhook answered 200, an agent
message the hookpoint answered ``ok``. Lost: taken and never arrived (at the
sandbox as the agent's side, at the callback backend as the customer's).
Duplicated: arrived more than once. Reordered: arrivals out of the order taken.
"""

import asyncio
import bisect
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence

import aiohttp

from omnidesk_sandbox.testing import Sandbox
from tests.channel.conftest import CallbackReceiver, CallbackSetup, ChannelServer

Fault = Callable[[], Awaitable[Dict[str, Any]]]


@dataclass
class Tally:
    """One direction's count."""

    taken: int = 0
    arrived: int = 0
    lost: List[str] = field(default_factory=list)
    duplicated: int = 0
    reordered: int = 0
    refused_tries: int = 0  # answers other than 200/ok, each sent again
    slowest: float = 0.0  # seconds, the longest a turn or message took to be taken

    def add(self, label: str, taken: List[int], arrivals: List[int]) -> None:
        seen: List[int] = []
        for number in arrivals:
            if number in seen:
                self.duplicated += 1
            else:
                seen.append(number)
        self.taken += len(taken)
        self.arrived += len(set(taken) & set(seen))
        self.lost.extend(f"{label} #{n}" for n in taken if n not in seen)
        self.reordered += _disorder([n for n in seen if n in taken])

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered)

    def __str__(self) -> str:
        return (
            f"taken {self.taken}, arrived {self.arrived}, lost {len(self.lost)}, "
            f"duplicated {self.duplicated}, reordered {self.reordered} "
            f"({self.refused_tries} tries refused and sent again; the slowest taken "
            f"in {self.slowest:.2f} s)"
        )


def _disorder(numbers: List[int]) -> int:
    """How many are out of place: all but a longest increasing run."""
    tails: List[int] = []
    for number in numbers:
        at = bisect.bisect_left(tails, number)
        if at == len(tails):
            tails.append(number)
        else:
            tails[at] = number
    return len(numbers) - len(tails)


@dataclass
class Report:
    customer_turns: Tally = field(default_factory=Tally)
    agent_messages: Tally = field(default_factory=Tally)
    numbering_problems: List[str] = field(default_factory=list)
    fault: Dict[str, Any] = field(default_factory=dict)
    # Seconds from the fault's start to the last refused try, each way.
    refused_until: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return (
            self.customer_turns.clean
            and self.agent_messages.clean
            and not self.numbering_problems
            and self.customer_turns.taken > 0
            and self.agent_messages.taken > 0
        )

    def __str__(self) -> str:
        lines = [
            f"customer turns to the agent: {self.customer_turns}",
            f"agent messages to the customer: {self.agent_messages}",
            f"numbering problems: {self.numbering_problems or 'none'}",
        ]
        if self.fault:
            lines.append(f"fault: {self.fault}")
        if self.refused_until:
            shown = ", ".join(f"{k} {v:.2f} s" for k, v in self.refused_until.items())
            lines.append(f"last refused try after the fault's start: {shown}")
        lines.append(f"run: {self.seconds:.1f} s")
        return "\n".join(lines)


@dataclass
class _Person:
    label: str
    chat: str
    said: List[int] = field(default_factory=list)
    written: List[int] = field(default_factory=list)


async def converse(
    servers: Sequence[ChannelServer],
    customer: CallbackReceiver,
    sandbox: Sandbox,
    *,
    customers: int = 6,
    turns: int = 10,
    midway: Optional[Fault] = None,
    pace: float = 0.05,
    retry_for: float = 30.0,
    settle: float = 30.0,
) -> Report:
    began = time.monotonic()
    report = Report()
    people: List[_Person] = []
    for index in range(customers):
        label = f"talker-{index}-{int(began * 1000) % 100000}"
        setup = CallbackSetup(server=servers[index % len(servers)], customer=customer)
        chat = await setup.hand_over(label)
        for server in servers:
            await server.wait_with_agent(label)
        people.append(_Person(label, chat))

    fault_started: List[float] = []
    fault_task: List[asyncio.Future[None]] = []

    async def run_fault() -> None:
        assert midway is not None
        report.fault = await midway()

    async with aiohttp.ClientSession() as http:

        async def say(person: _Person, number: int, server: ChannelServer) -> None:
            text = f"q{number} {person.label}"
            began = time.monotonic()
            deadline = began + retry_for
            while True:
                try:
                    async with http.post(
                        f"{server.url}/webhooks/callback/webhook",
                        json={"sender": person.label, "message": text},
                        timeout=aiohttp.ClientTimeout(total=retry_for + 30),
                    ) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                if status == 200:
                    person.said.append(number)
                    taken = report.customer_turns
                    taken.slowest = max(taken.slowest, time.monotonic() - began)
                    return
                report.customer_turns.refused_tries += 1
                _note_refusal(report, "customer turns", fault_started)
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.2)

        async def write(person: _Person, number: int, server: ChannelServer) -> None:
            chat = sandbox.chat(person.chat)
            base = chat.chat_server.split("/webhooks/", 1)
            chat.chat_server = f"{server.url}/webhooks/{base[1]}"
            began = time.monotonic()
            deadline = began + retry_for
            while True:
                result = await sandbox.agent_reply(person.chat, f"a{number} {person.label}")
                if result.ok and result.body.strip() == "ok":
                    person.written.append(number)
                    taken = report.agent_messages
                    taken.slowest = max(taken.slowest, time.monotonic() - began)
                    return
                report.agent_messages.refused_tries += 1
                _note_refusal(report, "agent messages", fault_started)
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.2)

        async def talk(index: int, person: _Person) -> None:
            for number in range(1, turns + 1):
                await say(person, number, servers[(index + number) % len(servers)])
                await write(person, number, servers[(index + number + 1) % len(servers)])
                if midway is not None and number == turns // 2 and not fault_started:
                    fault_started.append(time.monotonic())
                    fault_task.append(asyncio.ensure_future(run_fault()))
                await asyncio.sleep(pace)

        await asyncio.gather(*(talk(index, person) for index, person in enumerate(people)))
        if fault_task:
            await fault_task[0]

    await _settle(people, customer, sandbox, settle)
    for person in people:
        report.customer_turns.add(
            person.label, person.said, _numbers(_sandbox_texts(sandbox, person), "q", person)
        )
        report.agent_messages.add(
            person.label, person.written, _numbers(_customer_texts(customer, person), "a", person)
        )
        report.numbering_problems.extend(
            f"{person.label}: {problem}" for problem in sandbox.chat(person.chat).numbering_problems
        )
    report.seconds = time.monotonic() - began
    return report


def _note_refusal(report: Report, direction: str, fault_started: List[float]) -> None:
    if fault_started:
        report.refused_until[direction] = time.monotonic() - fault_started[0]


def _sandbox_texts(sandbox: Sandbox, person: _Person) -> List[str]:
    return [message.text for message in sandbox.chat(person.chat).messages]


def _customer_texts(customer: CallbackReceiver, person: _Person) -> List[str]:
    return [
        str(message.get("text") or "")
        for message in customer.received
        if message.get("recipient_id") == person.label
    ]


def _numbers(texts: List[str], kind: str, person: _Person) -> List[int]:
    pattern = re.compile(rf"\b{kind}(\d+) {re.escape(person.label)}$")
    return [int(found.group(1)) for found in map(pattern.search, texts) if found is not None]


async def _settle(
    people: List[_Person], customer: CallbackReceiver, sandbox: Sandbox, within: float
) -> None:
    """Wait, bounded, until everything taken has arrived (or the time is up: then it is lost)."""
    deadline = time.monotonic() + within

    def arrived() -> bool:
        for person in people:
            if set(person.said) - set(_numbers(_sandbox_texts(sandbox, person), "q", person)):
                return False
            if set(person.written) - set(_numbers(_customer_texts(customer, person), "a", person)):
                return False
        return True

    while not arrived() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    # A duplicate that is still on its way would be missed: give it a moment.
    await asyncio.sleep(0.5)
