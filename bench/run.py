"""Benchmarks of rasa-omnidesk, in one run on this machine: `make bench` or

    .venv/bin/python bench/run.py            # the full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # small counts, to check that it runs

It measures the floor (two bare Sanic hops), bot turns through the wrapped and a
plain callback channel, relayed customer turns (alone, at 50 and at N concurrent
handoffs, and in conversations of different tracker lengths), agent replies and
the memory of an idle handoff; prints p50, p99 and throughput of each, the
ratios and the targets (PASS/FAIL, reported, never asserted), and writes
results/latest.json and results/latest.png (a --quick run writes quick.json and
quick.png unless --out says otherwise).
"""

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import machine, memory  # noqa: E402
from bench.cpu import cpu_used  # noqa: E402
from bench.floor import Floor, far_end_turn, http_session, warm_connections  # noqa: E402
from bench.load import Figures, Turn, measure, measure_interleaved, ratio  # noqa: E402
from bench.product import (  # noqa: E402
    Product,
    agent_reply_turn,
    bot_turn,
    relay_turn,
    relayed_latency,
    relayed_throughput,
)
from bench.receiver import Receiver  # noqa: E402
from tests.e2e.stack import Stack  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# The sandbox keeps this many chats (it drops the oldest beyond): room for every handoff.
SANDBOX_MAX_CHATS = 2000


@dataclass(frozen=True)
class Plan:
    """How much of each measurement; every loop below is bounded by these."""

    bot_pairs: int
    relay_chats: int
    relay_turns: int
    pace: float  # seconds between sequential turns
    history_lengths: List[int]
    history_turns: int
    history_pace: float
    handoffs: int
    handoff_turns: int
    mid_concurrency: int
    mid_turns: int
    memory_handoffs: int


FULL = Plan(
    bot_pairs=300,
    relay_chats=10,
    relay_turns=400,
    pace=0.0,
    history_lengths=[10, 1000, 5000],
    history_turns=250,
    history_pace=0.024,  # 250 turns over ~6 s: each block spans a tracker write (every 5 s)
    handoffs=500,
    handoff_turns=20,
    mid_concurrency=50,
    mid_turns=10,
    memory_handoffs=10_000,
)

QUICK = Plan(
    bot_pairs=10,
    relay_chats=3,
    relay_turns=30,
    pace=0.005,
    history_lengths=[10, 500],
    history_turns=20,
    history_pace=0.005,
    handoffs=20,
    handoff_turns=3,
    mid_concurrency=5,
    mid_turns=2,
    memory_handoffs=1000,
)


def _start_stacks(log_dir: Path, callback_url: str) -> Tuple[Stack, Stack]:
    """The product (Rasa with the connector) and a plain Rasa, started side by side."""
    plain_credentials = {"callback": {"url": callback_url}}
    with ThreadPoolExecutor(2) as pool:
        wrapped_future = pool.submit(
            Stack.start,
            log_dir=log_dir / "wrapped",
            callback_url=callback_url,
            # Write relayed turns to their trackers every 5 s rather than every
            # 30 s, so each tracker-length block spans at least one such write.
            env={"OMNIDESK_RECORD_INTERVAL": "5"},
            sandbox_args=["--max-chats", str(SANDBOX_MAX_CHATS), "--log-level", "WARNING"],
        )
        plain_future = pool.submit(
            Stack.start,
            log_dir=log_dir / "plain",
            callback_url=callback_url,
            credentials_override=plain_credentials,
            sandbox_args=["--log-level", "WARNING"],
        )
        stacks: List[Stack] = []
        error: Optional[BaseException] = None
        for future in (wrapped_future, plain_future):
            try:
                stacks.append(future.result())
            except BaseException as failed:  # the other one must still be stopped
                error = failed
        if error is not None:
            for stack in stacks:
                stack.stop()
            raise error
    return stacks[0], stacks[1]


def _say(line: str) -> None:
    print(line, flush=True)


def _row(figures: Figures) -> str:
    return (
        f"  {figures.name:<38} p50 {figures.p50_ms:8.2f} ms   p99 {figures.p99_ms:8.2f} ms   "
        f"{figures.throughput:8.1f} /s   n={figures.count} errors={figures.errors}"
    )


async def measure_all(plan: Plan, log_dir: Path) -> Dict[str, Any]:
    figures: Dict[str, Any] = {}
    checks: Dict[str, Any] = {}
    receiver = await Receiver().start()
    loop = asyncio.get_running_loop()
    try:
        _say("starting the floor's servers and the stacks (sandbox, action server, Rasa)")
        started = time.monotonic()
        with Floor() as floor:
            wrapped, plain = await loop.run_in_executor(None, _start_stacks, log_dir, receiver.url)
            _say(f"  up in {time.monotonic() - started:.0f} s; logs in {log_dir}")
            try:
                await _measure_stacks(plan, floor, wrapped, plain, receiver, figures, checks)
            finally:
                await loop.run_in_executor(None, wrapped.stop)
                await loop.run_in_executor(None, plain.stop)
    finally:
        await receiver.stop()
    _say("memory of an idle handoff (tracemalloc, InMemorySwitchboard)")
    checks["memory"] = await memory.bytes_per_idle_handoff(plan.memory_handoffs)
    _say(f"  {checks['memory']['bytes_per_handoff']:.0f} bytes per handoff")
    return {"figures": figures, "checks": checks}


def _per_turn(used: Optional[float], turns: int) -> Optional[float]:
    return None if used is None or turns <= 0 else used * 1000 / turns


def _floor_pids(floor: Floor) -> Dict[str, int]:
    assert floor.hop1 is not None
    return {
        "floor_client": os.getpid(),
        "floor_hop1": floor.hop1.process.pid,
        "floor_hop2": floor.hop2.process.pid,
    }


def _stack_pids(stack: Any) -> Dict[str, int]:
    pids = {"relay_client": os.getpid()}
    for process in stack.processes:
        if process.name.startswith("Rasa"):
            pids["rasa_with_connector"] = process.popen.pid
        elif "sandbox" in process.name:
            pids["sandbox"] = process.popen.pid
    return pids


async def _throughput(name: str, turn: Turn, concurrency: int, count: int) -> Figures:
    await warm_connections(turn, concurrency)
    return await measure(name, turn, count=count, concurrency=concurrency, warmup=0)


async def _measure_stacks(
    plan: Plan,
    floor: Floor,
    wrapped: Any,
    plain: Any,
    receiver: Receiver,
    figures: Dict[str, Any],
    checks: Dict[str, Any],
) -> None:
    def keep(key: str, result: Figures, note: str = "") -> None:
        figures[key] = result.as_dict()
        _say(_row(result) + note)

    async with http_session() as http:
        product = Product(
            http, receiver, wrapped.rasa_url, wrapped.sandbox_url, wrapped.hookpoint_base
        )

        _say("bot turns through the wrapped and a plain callback channel, interleaved")
        tag = uuid.uuid4().hex[:6]
        bot = await measure_interleaved(
            {
                "bot turn, wrapped callback": bot_turn(product, wrapped.rasa_url, f"w{tag}"),
                "bot turn, plain callback": bot_turn(product, plain.rasa_url, f"p{tag}"),
            },
            count=plan.bot_pairs,
            pace=0.002,
            warmup=25,  # the first turn of each conversation starts its session
        )
        keep("bot_turn_wrapped", bot["bot turn, wrapped callback"])
        keep("bot_turn_plain", bot["bot turn, plain callback"])

        _say(f"handing {plan.relay_chats} conversations over (one by dialogue, the rest by action)")
        short = [await product.escalate_by_dialogue(f"dialogue-{tag}")]
        short += await product.escalate_many("short", plan.relay_chats - 1, concurrency=4)

        _say("one client: the floor, each far end alone, relayed turns, agent replies, interleaved")
        single = await measure_interleaved(
            {
                "floor c=1": floor.turn(http),
                "hop2 alone c=1": far_end_turn(http, floor.hop2.url, tag),
                "sandbox alone c=1": far_end_turn(http, wrapped.sandbox_url, tag),
                "relayed turn c=1": relay_turn(product, short, "single"),
                "agent reply to callback": agent_reply_turn(product, short),
            },
            count=plan.relay_turns,
            pace=plan.pace,
        )
        for key, name in (
            ("floor_c1", "floor c=1"),
            ("hop2_alone", "hop2 alone c=1"),
            ("sandbox_alone", "sandbox alone c=1"),
            ("relay_c1", "relayed turn c=1"),
            ("agent_reply", "agent reply to callback"),
        ):
            keep(key, single[name])
        # A turn the bot answered instead would be timed but missing here.
        checks["relay_c1_delivery"] = await product.check_delivery(short)
        _say(f"  delivery: {json.dumps(checks['relay_c1_delivery'])}")

        _say("relayed turns by tracker length (each spans a background tracker write)")
        history: List[Dict[str, Any]] = []
        for length in plan.history_lengths:
            sender = f"history-{length}-{tag}"
            await product.seed_history(sender, length)
            conversation = await product.escalate_by_action(sender)
            events = await product.tracker_length(sender)
            result = await relayed_latency(
                product,
                [conversation],
                plan.history_turns,
                plan.history_pace,
                f"relayed turn, {length} events",
            )
            history.append({"seeded_events": length, "tracker_events": events, **result.as_dict()})
            _say(_row(result) + f"   tracker {events} events")
            delivered = await product.check_delivery([conversation])
            if delivered["chats_with_lost_messages"] or delivered["chats_out_of_order"]:
                checks.setdefault("history_delivery_problems", []).append(delivered)
        figures["relay_by_history"] = history

        _say(f"handing {plan.handoffs} conversations over for the concurrent runs")
        started = time.monotonic()
        many = await product.escalate_many("load", plan.handoffs, concurrency=8)
        _say(f"  {len(many)} handoffs in {time.monotonic() - started:.0f} s")

        n, mid = plan.handoffs, plan.mid_concurrency
        floor_turn = floor.turn(http)
        keep(
            f"floor_c{mid}",
            await _throughput(f"floor c={mid}", floor_turn, mid, mid * plan.mid_turns),
        )
        keep(f"relay_c{mid}", await relayed_throughput(product, many[:mid], plan.mid_turns, "mid"))
        cpu: Dict[str, Optional[float]] = {}
        with cpu_used(_floor_pids(floor), cpu):
            result = await _throughput(f"floor c={n}", floor_turn, n, n * plan.handoff_turns)
        keep(f"floor_c{n}", result)
        floor_turns = result.count + n
        with cpu_used(_stack_pids(wrapped), cpu):
            result = await relayed_throughput(product, many, plan.handoff_turns, "load")
        keep(f"relay_c{n}", result)
        relay_turns = result.count + n
        checks[f"cpu_ms_per_turn_c{n}"] = per_turn = {
            name: _per_turn(cpu.get(name), turns)
            for name, turns in (
                ("floor_client", floor_turns),
                ("floor_hop1", floor_turns),
                ("floor_hop2", floor_turns),
                ("relay_client", relay_turns),
                ("rasa_with_connector", relay_turns),
                ("sandbox", relay_turns),
            )
        }
        _say("  CPU ms per turn: " + ", ".join(f"{k} {v:.2f}" for k, v in per_turn.items() if v))
        far = n * plan.handoff_turns // 2
        hop2 = far_end_turn(http, floor.hop2.url, tag + "c")
        keep(f"hop2_alone_c{n}", await _throughput(f"hop2 alone c={n}", hop2, n, far))
        sandbox = far_end_turn(http, wrapped.sandbox_url, tag + "c")
        keep(f"sandbox_alone_c{n}", await _throughput(f"sandbox alone c={n}", sandbox, n, far))
        checks["concurrent_delivery"] = await product.check_delivery(many)
        _say(f"  delivery: {json.dumps(checks['concurrent_delivery'])}")
        wrapped.check_alive()


# -- targets --------------------------------------------------------------------------


def evaluate(plan: Plan, measured: Dict[str, Any]) -> Dict[str, Any]:
    f = measured["figures"]
    checks = measured["checks"]
    n = plan.handoffs
    floor_n = f.get(f"floor_c{n}", {})
    relay_n = f.get(f"relay_c{n}", {})
    history = f["relay_by_history"]
    shortest, longest = history[0], history[-1]
    delivery = checks["concurrent_delivery"]
    cpu_n = checks.get(f"cpu_ms_per_turn_c{n}", {})
    nothing_lost = (
        relay_n.get("errors") == 0
        and delivery["chats_with_lost_messages"] == 0
        and delivery["chats_out_of_order"] == 0
        and delivery["chats_with_numbering_problems"] == 0
    )
    ratios = {
        "relay_p50_over_floor_p50": ratio(f["relay_c1"]["p50_ms"], f["floor_c1"]["p50_ms"]),
        "bot_p50_over_relay_p50": ratio(f["bot_turn_wrapped"]["p50_ms"], f["relay_c1"]["p50_ms"]),
        f"relay_throughput_over_floor_c{n}": ratio(
            relay_n.get("throughput"), floor_n.get("throughput")
        ),
        "wrapped_bot_p50_over_plain": ratio(
            f["bot_turn_wrapped"]["p50_ms"], f["bot_turn_plain"]["p50_ms"]
        ),
        "wrapped_bot_mean_over_plain": ratio(
            f["bot_turn_wrapped"]["mean_ms"], f["bot_turn_plain"]["mean_ms"]
        ),
        "long_over_short_history_p50": ratio(longest["p50_ms"], shortest["p50_ms"]),
        "long_over_short_history_p99": ratio(longest["p99_ms"], shortest["p99_ms"]),
        # Where a relayed turn's time goes: the far end alone (sandbox vs the floor's
        # hop2), and the rest, the first hop (Rasa with the connector vs the floor's hop1).
        "sandbox_alone_over_hop2_alone_p50": ratio(
            f["sandbox_alone"]["p50_ms"], f["hop2_alone"]["p50_ms"]
        ),
        "connector_hop_over_floor_hop1_p50": ratio(
            f["relay_c1"]["p50_ms"] - f["sandbox_alone"]["p50_ms"],
            f["floor_c1"]["p50_ms"] - f["hop2_alone"]["p50_ms"],
        ),
        f"sandbox_alone_over_hop2_alone_throughput_c{n}": ratio(
            f[f"sandbox_alone_c{n}"]["throughput"], f[f"hop2_alone_c{n}"]["throughput"]
        ),
        f"relay_throughput_over_sandbox_alone_c{n}": ratio(
            relay_n.get("throughput"), f[f"sandbox_alone_c{n}"]["throughput"]
        ),
        # CPU per turn at N concurrent: the first hop and the far end of each path.
        "connector_cpu_over_floor_hop1_per_turn": ratio(
            cpu_n.get("rasa_with_connector"), cpu_n.get("floor_hop1")
        ),
        "sandbox_cpu_over_hop2_per_turn": ratio(cpu_n.get("sandbox"), cpu_n.get("floor_hop2")),
        f"relay_c{plan.mid_concurrency}_throughput_over_floor": ratio(
            f[f"relay_c{plan.mid_concurrency}"]["throughput"],
            f.get(f"floor_c{plan.mid_concurrency}", {}).get("throughput"),
        ),
    }
    per_handoff = checks["memory"]["bytes_per_handoff"]
    targets = [
        _target(
            "relayed turn p50 at most 1.5x the floor's",
            ratios["relay_p50_over_floor_p50"] <= 1.5,
            f"{ratios['relay_p50_over_floor_p50']:.2f}x",
        ),
        _target(
            "relayed turn p50 at least 20x below a bot turn's",
            ratios["bot_p50_over_relay_p50"] >= 20,
            f"{ratios['bot_p50_over_relay_p50']:.1f}x",
        ),
        _target(
            f"{n} concurrent handoffs: at least half the floor's throughput",
            ratios[f"relay_throughput_over_floor_c{n}"] >= 0.5,
            f"{ratios[f'relay_throughput_over_floor_c{n}']:.2f}x",
        ),
        _target(
            f"{n} concurrent handoffs: nothing lost, order kept per chat",
            nothing_lost,
            f"{delivery['messages']} messages in {delivery['chats']} chats; "
            f"lost in {delivery['chats_with_lost_messages']}, out of order in "
            f"{delivery['chats_out_of_order']}, numbering problems in "
            f"{delivery['chats_with_numbering_problems']}, errors {relay_n.get('errors')}",
        ),
        _target(
            "the wrapper adds at most 2% to a bot turn (p50)",
            ratios["wrapped_bot_p50_over_plain"] <= 1.02,
            f"{(ratios['wrapped_bot_p50_over_plain'] - 1) * 100:+.1f}%",
        ),
        _target(
            f"relayed turn at {longest['tracker_events']} vs {shortest['tracker_events']} "
            "tracker events within 1.2x (p50)",
            ratios["long_over_short_history_p50"] <= 1.2,
            f"{ratios['long_over_short_history_p50']:.2f}x (p99 "
            f"{ratios['long_over_short_history_p99']:.2f}x)",
        ),
        _target(
            "an idle handoff holds at most 2 KB in the in-memory switchboard",
            per_handoff <= 2048,
            f"{per_handoff:.0f} bytes",
        ),
    ]
    return {"ratios": ratios, "targets": targets}


def _target(name: str, passed: bool, value: str) -> Dict[str, Any]:
    return {"target": name, "result": "PASS" if passed else "FAIL", "value": value}


def _clean(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be measured is null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: checks that it runs")
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON and PNG")
    parser.add_argument("--log-dir", type=Path, default=None, help="logs of the started processes")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or RESULTS
    stem = "quick" if args.quick and args.out is None else "latest"
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="rasa-omnidesk-bench-"))
    began = time.monotonic()
    measured = asyncio.run(measure_all(plan, log_dir))
    evaluated = evaluate(plan, measured)
    results = _clean(
        {
            "mode": "quick" if args.quick else "full",
            "machine": machine.describe(),
            "duration_s": round(time.monotonic() - began, 1),
            "plan": plan.__dict__,
            **measured,
            **evaluated,
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    from bench.plot import plot

    png_path = out / f"{stem}.png"
    plot(results, png_path)
    _say("\nratios:")
    for name, value in evaluated["ratios"].items():
        _say(f"  {name:<40} {value:.3f}")
    _say("\ntargets:")
    for target in evaluated["targets"]:
        _say(f"  {target['result']}  {target['target']}: {target['value']}")
    _say(f"\nwrote {json_path} and {png_path} in {results['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
