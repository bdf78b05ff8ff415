"""The Redis switchboard's rows again, counted instead of timed: round trips and commands per unit.

After the timed rows, on the stack with the Redis switchboard, with every
handoff of the run still open:

1. the sweeper's look over every open handoff is kept out of the counted
   windows: the benchmark holds its lease, as a second instance would (the
   product's sweeper then only ticks: a failed claim and the tracker record's
   due list). Its cost is measured apart, as background with and without it;
2. the background left (the outbox poll, the sweeper's tick, pub/sub health
   checks) is measured over a window with no traffic and taken off every
   window in proportion to its length;
3. each phase has two windows: **in the turns**, from before the first unit
   until its last one is done (an agent message: until it arrived and its
   drainer let go), short enough that no tracker write is due inside it; and
   **deferred**, until what the units left behind is done (the tracker record
   written by the sweeper's tick, ``OMNIDESK_RECORD_INTERVAL`` later). Before
   each phase the same wait, so no earlier work falls into it.

Phases: agent messages (``messageForCustomer`` through the outbox until the
customer's backend has each), relayed turns at one client, and relayed turns
of N handoffs, one turn each (a tracker write per turn, as with a turn or two
per chat per record interval in production).
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional

from bench.load import measure_sessions
from bench.product import WARM_UP_AT_ONCE, Conversation, Product
from bench.redis_traffic import Monitor, RedisCounter, Traffic, top_commands, trace_requests

# The product stacks write relayed turns to trackers every OMNIDESK_RECORD_INTERVAL seconds
# (run.py sets 5); the sweeper ticks every quarter of it.
RECORD_INTERVAL = 5.0
SWEEP_TICK = RECORD_INTERVAL / 4
# Before and after each phase: a record interval and two ticks, then until it is quiet.
SETTLE = RECORD_INTERVAL + 2 * SWEEP_TICK
SETTLE_AT_MOST = 60.0
# After the last agent message arrived: its drainer removes it and lets the lease go.
DRAIN_TAIL = 0.3
HOLDER = "benchmark:holds-the-sweeper"
HOLD_MS = 600_000  # bounded: gone ten minutes after a run that died holding it


@dataclass(frozen=True)
class Counting:
    """How much of each counted phase."""

    agent_messages: int
    relay_turns: int
    background_seconds: float


class RoundTripsError(RuntimeError):
    """A counted phase could not be run as planned; the message says what."""


async def _hold_sweeper(board: Any) -> None:
    """Take the sweeper's lease as another instance holding it would, and check it is taken."""
    await board.redis.set(f"{board.prefix}sweeper", HOLDER, px=HOLD_MS)
    if await board.claim_sweeper("benchmark:probe", 1.0):
        raise RoundTripsError(
            "the sweeper's lease is not where the benchmark holds it "
            f"({board.prefix}sweeper): update bench/round_trips.py"
        )


async def _release_sweeper(board: Any) -> None:
    await board.release_sweeper(HOLDER)


async def _phase(
    counter: RedisCounter,
    background: Traffic,
    units: Callable[[], Awaitable[int]],
    tail: float,
) -> Dict[str, Any]:
    first = await counter.snapshot()
    done = await units()
    await asyncio.sleep(tail)
    middle = await counter.snapshot()
    await counter.quiet(background, SETTLE, SETTLE_AT_MOST)
    last = await counter.snapshot()
    during = RedisCounter.between(first, middle)
    after = RedisCounter.between(middle, last)
    during_net, after_net = during.minus(background), after.minus(background)
    return {
        "units": done,
        "in_turns": during_net.per(done),
        "deferred": after_net.per(done),
        "total": during_net.plus(after_net).per(done),
        # A tracker write due inside the turns' window would count there, not as deferred.
        "turns_window_s": round(during.seconds, 3),
        "turns_window_clean": during.seconds < RECORD_INTERVAL,
        "measured": {"in_turns": during.as_dict(), "deferred": after.as_dict()},
    }


async def count(
    plan: Counting,
    redis_url: str,
    redis_port: int,
    product: Product,
    few: List[Conversation],
    many: List[Conversation],
) -> Dict[str, Any]:
    """Count the phases on ``product`` (the Redis stack); ``few`` for one client, ``many`` for N."""
    from connectors.omnidesk.channel.redis_switchboard import RedisSwitchboard

    counter = RedisCounter("127.0.0.1", redis_port)
    board = RedisSwitchboard(redis_url)
    results: Dict[str, Any] = {"open_handoffs": await board.count_open()}
    try:
        # What the earlier rows left behind (tracker writes) is done first.
        await asyncio.sleep(SETTLE)
        with_sweeper = (await counter.over(plan.background_seconds)).rate()
        await _hold_sweeper(board)
        try:
            # A sweep under way when the lease was taken finishes.
            await asyncio.sleep(2 * SWEEP_TICK)
            background = (await counter.over(plan.background_seconds)).rate()
            results["background_per_second"] = {
                "sweeper_running": with_sweeper.as_dict(),
                "sweeper_held": background.as_dict(),
            }

            async def agent_messages() -> int:
                for i in range(plan.agent_messages):
                    await product.agent_reply(few[i % len(few)], f"counted agent message {i}")
                return plan.agent_messages

            async def relayed_turns() -> int:
                for i in range(plan.relay_turns):
                    await product.relay(few[i % len(few)], f"counted turn {i}")
                return plan.relay_turns

            async def relayed_at_n() -> int:
                opening = asyncio.Semaphore(WARM_UP_AT_ONCE)

                async def turn(session: int, _: int) -> None:
                    async with opening:
                        await product.relay(many[session], f"counted turn at n {session}")

                figures = await measure_sessions(
                    "counted", turn, sessions=len(many), turns_per_session=1
                )
                if figures.errors:
                    raise RoundTripsError(f"{figures.errors} counted relayed turns failed")
                return figures.count

            results["agent_message"] = await _phase(counter, background, agent_messages, DRAIN_TAIL)
            results["relayed_turn_c1"] = await _phase(counter, background, relayed_turns, 0.05)
            results["relayed_turn_n"] = await _phase(counter, background, relayed_at_n, 0.05)
            # Last: what their tracker writes leave behind falls in no counted window.
            results["traces"] = await _traces(redis_port, product, few[0])
        finally:
            await _release_sweeper(board)
    finally:
        await board.close()
        await counter.close()
    return results


async def _traces(redis_port: int, product: Product, one: Conversation) -> Dict[str, List[str]]:
    """One relayed turn and one agent message as redis-server ran them, request by request.

    A request that also comes with no traffic at all (the outbox poll, the sweeper's tick,
    seen over a tick and a half of quiet first) is marked "(background)".
    """
    monitor = Monitor("127.0.0.1", redis_port)
    names = {"<conversation>": one.sender, "<chat>": one.chat_session_id}
    quiet = await monitor.trace(lambda: asyncio.sleep(SWEEP_TICK * 1.5))
    background = {_what(request) for request in trace_requests(quiet, names)}
    turn = await monitor.trace(lambda: product.relay(one, "traced turn"))
    message = await monitor.trace(
        lambda: product.agent_reply(one, "traced agent message"), tail=DRAIN_TAIL
    )

    def marked(traced: List[Any]) -> List[str]:
        return [
            request + (BACKGROUND if _what(request) in background else "")
            for request in trace_requests(traced, names)
        ]

    return {"relayed_turn": marked(turn), "agent_message": marked(message)}


BACKGROUND = "  (background)"


def _what(request: str) -> str:
    """A traced request without the connection it came on."""
    return request.split(" ", 1)[1] if " " in request else request


def lines(results: Dict[str, Any], n: int) -> List[str]:
    """Per unit: round trips and commands in the turns, deferred, and the top commands."""
    out: List[str] = []
    for key, label in (
        ("relayed_turn_c1", "per relayed turn, 1 client"),
        ("relayed_turn_n", f"per relayed turn, {n} handoffs"),
        ("agent_message", "per agent message"),
    ):
        phase = results[key]
        during, deferred, total = phase["in_turns"], phase["deferred"], phase["total"]
        note = "" if phase["turns_window_clean"] else "  (turns window > record interval)"
        out.append(
            f"  {label:<32} round trips {_n(total['round_trips'])} "
            f"({_n(during['round_trips'])} in the turn + {_n(deferred['round_trips'])} "
            f"deferred)   commands {_n(total['commands'])}   n={phase['units']}{note}"
        )
        out.append(f"    in the turn: {top_commands(during)}")
        if deferred.get("by_command"):
            out.append(f"    deferred:    {top_commands(deferred)}")
    held = results["background_per_second"]["sweeper_held"]
    running = results["background_per_second"]["sweeper_running"]
    out.append(
        f"  background at {results['open_handoffs']} open handoffs: "
        f"{running['round_trips']:.1f} round trips/s with the sweeper, "
        f"{held['round_trips']:.1f}/s without its look over the handoffs"
    )
    for key, label in (
        ("relayed_turn", "one relayed turn"),
        ("agent_message", "one agent message"),
    ):
        out.append(
            f"  {label} as redis-server ran it (MONITOR; #n a connection, in brackets "
            "what a script called or a MULTI held):"
        )
        out.extend(f"    {request}" for request in results["traces"][key])
    return out


def _n(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:5.2f}"
