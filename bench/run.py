"""Benchmarks of rasa-omnidesk, in one run on this machine: `make bench` or

    .venv/bin/python bench/run.py            # the full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # small counts, to check that it runs

It measures the floor (two bare Sanic hops, and the same with one Redis round
trip in the first hop), bot turns through the wrapped and a plain callback
channel, relayed customer turns (alone, at 50 and at N concurrent handoffs, and
in conversations of different tracker lengths), agent replies through the
outbox and the memory of an idle handoff; the same relayed turns (alone and at
N handoffs) and agent replies again on a third stack whose switchboard, turn
lease, tracker buffer and outbox live in Redis (a redis-server the run starts
and stops on loopback). It prints p50, p99 and throughput of each, the ratios
and the targets (PASS/FAIL, reported, never asserted). Then, untimed: a
cProfile of each product's Rasa process under the N-handoff load, by stage
(bench/cpu_profile.py), and the Redis round trips and commands per relayed turn
and per agent message (bench/round_trips.py). Last, the Redis rows once more on
a fourth stack whose switchboard is a Redis Cluster of 3 masters (no replicas:
the price of the mode, not of replication), with the round trips summed over
the masters (``--no-cluster`` leaves it out). It writes results/latest.json and
results/latest.png (a --quick run writes quick.json and quick.png unless --out
says otherwise); the profiles are kept beside the processes' logs.
"""

import argparse
import asyncio
import json
import math
import os
import shutil
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

from bench import cpu_profile, machine, memory, round_trips  # noqa: E402
from bench.cpu import cpu_used  # noqa: E402
from bench.floor import Floor, far_end_turn, http_session, warm_connections  # noqa: E402
from bench.load import Figures, Turn, measure, measure_interleaved, ratio  # noqa: E402
from bench.product import (  # noqa: E402
    Product,
    agent_reply_turn,
    bot_turn,
    relay_turn,
    relayed_latency,
    relayed_sessions,
    relayed_throughput,
    warm_relay,
)
from bench.receiver import Receiver  # noqa: E402
from bench.redis_traffic import NodesCounter, RedisCounter  # noqa: E402
from tests.cluster.cluster import RedisServer, redis_program  # noqa: E402
from tests.e2e.stack import Stack  # noqa: E402
from tests.redis_servers import RedisClusterServers  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# The sandbox keeps this many chats (it drops the oldest beyond): room for every handoff.
SANDBOX_MAX_CHATS = 2000
# Bounded start of the benchmark's own redis-server.
REDIS_START_TIMEOUT = 30.0
# The floor's Redis round trips go to their own database of that server.
FLOOR_REDIS_DB = 2
# The Redis Cluster of the last rows: this many masters, no replicas.
CLUSTER_MASTERS = 3


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
    profile_turns: int  # per chat, at N handoffs, under the profiler
    count_agent_messages: int
    count_relay_turns: int
    background_seconds: float


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
    profile_turns=10,
    count_agent_messages=100,
    count_relay_turns=200,
    background_seconds=10.0,
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
    profile_turns=3,
    count_agent_messages=10,
    count_relay_turns=20,
    background_seconds=3.0,
)


def _start_stacks(
    log_dir: Path, callback_url: str, redis_url: str, files_dir: Path
) -> Tuple[Stack, Stack, Stack]:
    """Started side by side: the product with the in-memory switchboard, a plain Rasa,
    and the product with the Redis switchboard.

    Both products write relayed turns to their trackers every 5 s rather than
    every 30 s, so each tracker-length block spans at least one such write. The
    Redis one differs from the other by OMNIDESK_SWITCHBOARD_URL (and the
    OMNIDESK_FILES_DIR it requires) alone: Rasa's lock store stays in memory, as
    on one instance, so what its figures add is the connector's Redis. Both
    products can be profiled on request (bench/profile_hook: nothing runs until
    asked).
    """
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    product_env = {
        "OMNIDESK_RECORD_INTERVAL": str(round_trips.RECORD_INTERVAL),
        **cpu_profile.hook_env(log_dir / "profiles", pythonpath),
    }
    sandbox_args = ["--max-chats", str(SANDBOX_MAX_CHATS), "--log-level", "WARNING"]
    plain_credentials = {"callback": {"url": callback_url}}
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(
                Stack.start,
                log_dir=log_dir / "wrapped",
                callback_url=callback_url,
                env=product_env,
                sandbox_args=sandbox_args,
            ),
            pool.submit(
                Stack.start,
                log_dir=log_dir / "plain",
                callback_url=callback_url,
                credentials_override=plain_credentials,
                sandbox_args=["--log-level", "WARNING"],
            ),
            pool.submit(
                Stack.start,
                log_dir=log_dir / "redis",
                callback_url=callback_url,
                env={
                    **product_env,
                    "OMNIDESK_SWITCHBOARD_URL": redis_url,
                    "OMNIDESK_FILES_DIR": str(files_dir),
                },
                sandbox_args=sandbox_args,
            ),
        ]
        stacks: List[Stack] = []
        error: Optional[BaseException] = None
        for future in futures:
            try:
                stacks.append(future.result())
            except BaseException as failed:  # the others must still be stopped
                error = failed
        if error is not None:
            for stack in stacks:
                stack.stop()
            raise error
    return stacks[0], stacks[1], stacks[2]


def _say(line: str) -> None:
    print(line, flush=True)


def _row(figures: Figures) -> str:
    row = (
        f"  {figures.name:<38} p50 {figures.p50_ms:8.2f} ms   p99 {figures.p99_ms:8.2f} ms   "
        f"{figures.throughput:8.1f} /s   n={figures.count} errors={figures.errors}"
    )
    for kind, times in figures.error_kinds.items():
        row += f"\n      {times} x {kind}"
    return row


async def measure_all(plan: Plan, log_dir: Path, cluster: bool = True) -> Dict[str, Any]:
    figures: Dict[str, Any] = {}
    checks: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}  # the untimed measures: cpu_profiles, redis_round_trips
    receiver = await Receiver().start()
    loop = asyncio.get_running_loop()
    files_dir = Path(tempfile.mkdtemp(prefix="rasa-omnidesk-bench-files-"))
    try:
        _say(
            "starting the floor's servers, redis-server and the stacks "
            "(sandbox, action server, Rasa; memory, plain and Redis)"
        )
        started = time.monotonic()
        redis = await loop.run_in_executor(
            None,
            RedisServer.start,
            log_dir / "redis-server.log",
            time.monotonic() + REDIS_START_TIMEOUT,
        )
        try:
            with Floor(redis.url(FLOOR_REDIS_DB)) as floor:
                wrapped, plain, switched = await loop.run_in_executor(
                    None, _start_stacks, log_dir, receiver.url, redis.url(), files_dir
                )
                _say(f"  up in {time.monotonic() - started:.0f} s; logs in {log_dir}")
                try:
                    stacks = Stacks(wrapped, plain, switched, redis)
                    await _measure_stacks(
                        plan, floor, stacks, receiver, figures, checks, log_dir, extra
                    )
                finally:
                    for stack in (wrapped, plain, switched):
                        await loop.run_in_executor(None, stack.stop)
        finally:
            await loop.run_in_executor(None, redis.stop)
        if cluster:
            await _measure_on_a_cluster(plan, receiver, log_dir, files_dir, figures, extra)
    finally:
        await receiver.stop()
        shutil.rmtree(files_dir, ignore_errors=True)
    _say("memory of an idle handoff (tracemalloc, InMemorySwitchboard)")
    checks["memory"] = await memory.bytes_per_idle_handoff(plan.memory_handoffs)
    _say(f"  {checks['memory']['bytes_per_handoff']:.0f} bytes per handoff")
    return {"figures": figures, "checks": checks, **extra}


@dataclass
class Stacks:
    """What a run measures: the product in memory, a plain Rasa, the product on Redis."""

    wrapped: Any
    plain: Any
    switched: Any  # the product with OMNIDESK_SWITCHBOARD_URL=redis://...
    redis: Any  # the redis-server it uses


def _per_turn(used: Optional[float], turns: int) -> Optional[float]:
    return None if used is None or turns <= 0 else used * 1000 / turns


def _floor_pids(floor: Floor) -> Dict[str, int]:
    assert floor.hop1 is not None
    return {
        "floor_client": os.getpid(),
        "floor_hop1": floor.hop1.process.pid,
        "floor_hop2": floor.hop2.process.pid,
    }


def _floor_redis_pids(floor: Floor, redis: Any) -> Dict[str, int]:
    assert floor.hop1_redis is not None
    return {
        "floor_client": os.getpid(),
        "floor_hop1_redis": floor.hop1_redis.process.pid,
        "floor_hop2": floor.hop2.process.pid,
        "redis_server": redis.process.popen.pid,
    }


def _stack_pids(stack: Any, redis: Any = None) -> Dict[str, int]:
    pids = {"relay_client": os.getpid()}
    for process in stack.processes:
        if process.name.startswith("Rasa"):
            pids["rasa_with_connector"] = process.popen.pid
        elif "sandbox" in process.name:
            pids["sandbox"] = process.popen.pid
    if redis is not None:
        pids["redis_server"] = redis.process.popen.pid
    return pids


def _delivery_problems(delivered: Dict[str, Any]) -> bool:
    return bool(
        delivered["chats_with_lost_messages"]
        or delivered["chats_out_of_order"]
        or delivered["chats_with_numbering_problems"]
    )


async def _throughput(name: str, turn: Turn, concurrency: int, count: int) -> Figures:
    await warm_connections(turn, concurrency)
    return await measure(name, turn, count=count, concurrency=concurrency, warmup=0)


async def _measure_stacks(
    plan: Plan,
    floor: Floor,
    stacks: Stacks,
    receiver: Receiver,
    figures: Dict[str, Any],
    checks: Dict[str, Any],
    log_dir: Path,
    extra: Dict[str, Any],
) -> None:
    def keep(key: str, result: Figures, note: str = "") -> None:
        figures[key] = result.as_dict()
        _say(_row(result) + note)

    wrapped, plain, switched = stacks.wrapped, stacks.plain, stacks.switched
    async with http_session() as http:
        product = Product(
            http, receiver, wrapped.rasa_url, wrapped.sandbox_url, wrapped.hookpoint_base
        )
        on_redis = Product(
            http, receiver, switched.rasa_url, switched.sandbox_url, switched.hookpoint_base
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

        _say(
            f"handing {plan.relay_chats} conversations over on each product stack "
            "(one by dialogue, the rest by action)"
        )

        async def hand_over(on: Product, which: str) -> List[Any]:
            # Senders differ between the stacks: the receiver tells replies apart by sender.
            first = [await on.escalate_by_dialogue(f"dialogue-{which}{tag}")]
            return first + await on.escalate_many("short", plan.relay_chats - 1, concurrency=4)

        short, short_redis = await asyncio.gather(hand_over(product, "m"), hand_over(on_redis, "r"))

        _say(
            "one client: the floor, each far end alone, relayed turns and agent replies "
            "(memory and Redis), interleaved"
        )
        names = {
            "floor_c1": "floor c=1",
            "floor_redis_c1": "floor + 1 Redis round trip c=1",
            "hop2_alone": "hop2 alone c=1",
            "sandbox_alone": "sandbox alone c=1",
            "relay_c1": "relayed turn c=1",
            "relay_redis_c1": "relayed turn c=1, Redis",
            "agent_reply": "agent reply, memory outbox",
            "agent_reply_redis": "agent reply, Redis outbox",
        }
        single = await measure_interleaved(
            {
                names["floor_c1"]: floor.turn(http),
                names["floor_redis_c1"]: floor.turn(http, with_redis=True),
                names["hop2_alone"]: far_end_turn(http, floor.hop2.url, tag),
                names["sandbox_alone"]: far_end_turn(http, wrapped.sandbox_url, tag),
                names["relay_c1"]: relay_turn(product, short, "single"),
                names["relay_redis_c1"]: relay_turn(on_redis, short_redis, "single"),
                names["agent_reply"]: agent_reply_turn(product, short),
                names["agent_reply_redis"]: agent_reply_turn(on_redis, short_redis),
            },
            count=plan.relay_turns,
            pace=plan.pace,
        )
        for key, name in names.items():
            keep(key, single[name])
        # A turn the bot answered instead would be timed but missing here.
        checks["relay_c1_delivery"] = await product.check_delivery(short)
        _say(f"  delivery: {json.dumps(checks['relay_c1_delivery'])}")
        checks["relay_redis_c1_delivery"] = await on_redis.check_delivery(short_redis)
        _say(f"  delivery, Redis: {json.dumps(checks['relay_redis_c1_delivery'])}")

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
            if _delivery_problems(delivered):
                checks.setdefault("history_delivery_problems", []).append(delivered)
        figures["relay_by_history"] = history

        _say(f"handing {plan.handoffs} conversations over on each product stack")
        started = time.monotonic()
        many, many_redis = await asyncio.gather(
            product.escalate_many("load", plan.handoffs, concurrency=8),
            on_redis.escalate_many("load", plan.handoffs, concurrency=8),
        )
        _say(f"  {len(many)} + {len(many_redis)} handoffs in {time.monotonic() - started:.0f} s")

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
        floor_redis_cpu: Dict[str, Optional[float]] = {}
        floor_redis_turn = floor.turn(http, with_redis=True)
        with cpu_used(_floor_redis_pids(floor, stacks.redis), floor_redis_cpu):
            result = await _throughput(
                f"floor + 1 Redis round trip c={n}", floor_redis_turn, n, n * plan.handoff_turns
            )
        keep(f"floor_redis_c{n}", result)
        checks[f"floor_redis_cpu_ms_per_turn_c{n}"] = {
            name: _per_turn(used, result.count + n) for name, used in floor_redis_cpu.items()
        }
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
        redis_cpu: Dict[str, Optional[float]] = {}
        with cpu_used(_stack_pids(switched, stacks.redis), redis_cpu):
            result = await relayed_throughput(on_redis, many_redis, plan.handoff_turns, "load")
        result.name += ", Redis"
        keep(f"relay_redis_c{n}", result)
        redis_turns = result.count + n
        checks[f"redis_cpu_ms_per_turn_c{n}"] = redis_per_turn = {
            name: _per_turn(used, redis_turns) for name, used in redis_cpu.items()
        }
        _say(
            "  CPU ms per turn, Redis: "
            + ", ".join(f"{k} {v:.2f}" for k, v in redis_per_turn.items() if v)
        )
        far = n * plan.handoff_turns // 2
        hop2 = far_end_turn(http, floor.hop2.url, tag + "c")
        keep(f"hop2_alone_c{n}", await _throughput(f"hop2 alone c={n}", hop2, n, far))
        sandbox = far_end_turn(http, wrapped.sandbox_url, tag + "c")
        keep(f"sandbox_alone_c{n}", await _throughput(f"sandbox alone c={n}", sandbox, n, far))
        checks["concurrent_delivery"] = await product.check_delivery(many)
        _say(f"  delivery: {json.dumps(checks['concurrent_delivery'])}")
        checks["redis_concurrent_delivery"] = await on_redis.check_delivery(many_redis)
        _say(f"  delivery, Redis: {json.dumps(checks['redis_concurrent_delivery'])}")
        wrapped.check_alive()
        switched.check_alive()

        _say(
            f"profiling each product's Rasa process under {n} handoffs "
            f"({plan.profile_turns} turns each; untimed)"
        )
        profiles: Dict[str, Any] = {}
        for key, stack, on, conversations, unprofiled in (
            ("memory", wrapped, product, many, per_turn.get("rasa_with_connector")),
            ("redis", switched, on_redis, many_redis, redis_per_turn.get("rasa_with_connector")),
        ):
            profiles[key] = await _profile_relay(
                key, stack, on, conversations, plan.profile_turns, unprofiled, log_dir
            )
            for line in cpu_profile.lines(f"Rasa with the connector, {key}", profiles[key]):
                _say(line)
        extra["cpu_profiles"] = profiles

        _say(
            "counting Redis round trips and commands on the Redis stack "
            "(untimed; background measured and taken off)"
        )
        assert stacks.redis is not None
        extra["redis_round_trips"] = await round_trips.count(
            round_trips.Counting(
                agent_messages=plan.count_agent_messages,
                relay_turns=plan.count_relay_turns,
                background_seconds=plan.background_seconds,
            ),
            stacks.redis.url(),
            RedisCounter("127.0.0.1", stacks.redis.port),
            on_redis,
            short_redis,
            many_redis,
            trace_port=stacks.redis.port,
        )
        switched.check_alive()
        _say_beside_floor(figures, n, extra["redis_round_trips"])


async def _profile_relay(
    name: str,
    stack: Any,
    on: Product,
    conversations: List[Any],
    turns_per_chat: int,
    unprofiled_ms: Optional[float],
    log_dir: Path,
) -> Dict[str, Any]:
    """Relayed turns at N handoffs with the Rasa process under cProfile, summarised by stage."""
    pid = _stack_pids(stack)["rasa_with_connector"]
    profiling = cpu_profile.Profiling(pid, log_dir / "profiles")
    await warm_relay(on, conversations, f"profile-{name}")
    cpu: Dict[str, Optional[float]] = {}
    profiling.start()
    with cpu_used({"rasa": pid}, cpu):
        result = await relayed_sessions(on, conversations, turns_per_chat, f"profile-{name}")
    path = await profiling.stop()
    summary = cpu_profile.summarise(path, result.count, unprofiled_ms)
    summary["errors"] = result.errors
    summary["cpu_ms_per_turn_under_profiler"] = _per_turn(cpu.get("rasa"), result.count)
    return summary


async def _measure_on_a_cluster(
    plan: Plan,
    receiver: Receiver,
    log_dir: Path,
    files_dir: Path,
    figures: Dict[str, Any],
    extra: Dict[str, Any],
) -> None:
    """The Redis rows once more, the switchboard on a Redis Cluster, after the other stacks
    stopped (the machine runs one stack at a time here)."""
    loop = asyncio.get_running_loop()
    program, cli = redis_program(), shutil.which("redis-cli")
    if program is None or cli is None:
        _say("no redis-cli (apt-get install redis-tools): the Redis Cluster rows are left out")
        return
    _say(f"starting a Redis Cluster of {CLUSTER_MASTERS} masters and a stack on it")
    started = time.monotonic()
    servers = await loop.run_in_executor(
        None,
        lambda: RedisClusterServers.start(
            program, cli, log_dir / "redis-cluster", masters=CLUSTER_MASTERS, replicas=0
        ),
    )
    try:
        block = {
            "deployment_mode": "cluster",
            "endpoints": [str(node.address) for node in servers.nodes],
        }
        stack = await loop.run_in_executor(
            None,
            lambda: Stack.start(
                log_dir=log_dir / "redis-cluster-stack",
                callback_url=receiver.url,
                env={
                    "OMNIDESK_RECORD_INTERVAL": str(round_trips.RECORD_INTERVAL),
                    "OMNIDESK_REDIS": json.dumps(block),
                    "OMNIDESK_FILES_DIR": str(files_dir),
                },
                sandbox_args=["--max-chats", str(SANDBOX_MAX_CHATS), "--log-level", "WARNING"],
            ),
        )
        try:
            _say(f"  up in {time.monotonic() - started:.0f} s")
            await _measure_cluster_rows(plan, stack, servers, block, receiver, figures, extra)
        finally:
            await loop.run_in_executor(None, stack.stop)
    finally:
        await loop.run_in_executor(None, servers.stop)


async def _measure_cluster_rows(
    plan: Plan,
    stack: Any,
    servers: RedisClusterServers,
    block: Dict[str, Any],
    receiver: Receiver,
    figures: Dict[str, Any],
    extra: Dict[str, Any],
) -> None:
    def keep(key: str, result: Figures) -> None:
        figures[key] = result.as_dict()
        _say(_row(result))

    n = plan.handoffs
    checks: Dict[str, Any] = {}
    async with http_session() as http:
        on_cluster = Product(
            http, receiver, stack.rasa_url, stack.sandbox_url, stack.hookpoint_base
        )
        few = await on_cluster.escalate_many("cluster-short", plan.relay_chats, concurrency=4)
        single = await measure_interleaved(
            {
                "relayed turn c=1, Redis Cluster": relay_turn(on_cluster, few, "single"),
                "agent reply, Redis Cluster outbox": agent_reply_turn(on_cluster, few),
            },
            count=plan.relay_turns,
            pace=plan.pace,
        )
        keep("relay_cluster_c1", single["relayed turn c=1, Redis Cluster"])
        keep("agent_reply_cluster", single["agent reply, Redis Cluster outbox"])
        many = await on_cluster.escalate_many("cluster-load", n, concurrency=8)
        result = await relayed_throughput(on_cluster, many, plan.handoff_turns, "load")
        result.name += ", Redis Cluster"
        keep(f"relay_cluster_c{n}", result)
        checks["delivery"] = await on_cluster.check_delivery(many)
        _say(f"  delivery, Redis Cluster: {json.dumps(checks['delivery'])}")
        stack.check_alive()

        from connectors.omnidesk.redis_connection import RedisConnection

        masters = [("127.0.0.1", node.port) for node in servers.masters()]
        counter: RedisCounter = NodesCounter(masters)
        _say(f"counting Redis round trips and commands over the {len(masters)} masters")
        extra["redis_cluster_round_trips"] = await round_trips.count(
            round_trips.Counting(
                agent_messages=plan.count_agent_messages,
                relay_turns=plan.count_relay_turns,
                background_seconds=plan.background_seconds,
            ),
            RedisConnection.from_config(block),
            counter,
            on_cluster,
            few,
            many,
        )
        extra["redis_cluster_checks"] = checks
        stack.check_alive()
    _say_cluster_beside_one_redis(figures, n, extra)


def _say_cluster_beside_one_redis(figures: Dict[str, Any], n: int, extra: Dict[str, Any]) -> None:
    _say(f"the Redis Cluster ({CLUSTER_MASTERS} masters) beside one Redis (p50)")
    one, cluster = extra.get("redis_round_trips", {}), extra["redis_cluster_round_trips"]
    for label, cluster_key, redis_key, counted_key in (
        ("relayed turn, 1 client", "relay_cluster_c1", "relay_redis_c1", "relayed_turn_c1"),
        (
            f"relayed turn, {n} handoffs",
            f"relay_cluster_c{n}",
            f"relay_redis_c{n}",
            "relayed_turn_n",
        ),
        (
            "agent reply through the outbox",
            "agent_reply_cluster",
            "agent_reply_redis",
            "agent_message",
        ),
    ):
        on_cluster, on_one = figures[cluster_key], figures.get(redis_key, {})
        trips = cluster[counted_key]["total"]
        line = (
            f"  {label:<32} Cluster {on_cluster['p50_ms']:8.2f} ms   one Redis "
            f"{on_one.get('p50_ms', float('nan')):8.2f} ms "
            f"({ratio(on_cluster['p50_ms'], on_one.get('p50_ms')):.2f}x)   "
            f"{trips['round_trips']:.2f} round trips, {trips['commands']:.1f} commands"
        )
        if counted_key in one:
            single = one[counted_key]["total"]
            line += f" (one Redis {single['round_trips']:.2f}, {single['commands']:.1f})"
        _say(line)
    _say(
        f"  {'throughput, ' + str(n) + ' handoffs':<32} Cluster "
        f"{figures[f'relay_cluster_c{n}']['throughput']:8.1f} /s   one Redis "
        f"{figures.get(f'relay_redis_c{n}', {}).get('throughput', float('nan')):8.1f} /s"
    )
    _say("Redis Cluster round trips and commands (summed over the masters; background taken off)")
    for line in round_trips.lines(cluster, n):
        _say(line)


def _say_beside_floor(figures: Dict[str, Any], n: int, counted: Dict[str, Any]) -> None:
    """The Redis switchboard's rows beside the floor, the floor with one Redis round trip and
    the in-memory product, with ratios; then what each costs in Redis round trips."""
    _say(
        "the Redis switchboard beside the floor, the floor + 1 Redis round trip (floor+1RT) "
        "and the in-memory switchboard (p50)"
    )
    for label, redis_key, memory_key, floor_key, counted_key in (
        ("relayed turn, 1 client", "relay_redis_c1", "relay_c1", "c1", "relayed_turn_c1"),
        (
            f"relayed turn, {n} handoffs",
            f"relay_redis_c{n}",
            f"relay_c{n}",
            f"c{n}",
            "relayed_turn_n",
        ),
        (
            "agent reply through the outbox",
            "agent_reply_redis",
            "agent_reply",
            None,
            "agent_message",
        ),
    ):
        redis, memory = figures[redis_key], figures[memory_key]
        line = (
            f"  {label:<32} Redis {redis['p50_ms']:8.2f} ms   "
            f"memory {memory['p50_ms']:8.2f} ms ({ratio(redis['p50_ms'], memory['p50_ms']):.2f}x)"
        )
        if floor_key is not None:
            floor, floor_rt = figures[f"floor_{floor_key}"], figures[f"floor_redis_{floor_key}"]
            line += (
                f"   floor {floor['p50_ms']:8.2f} ms "
                f"({ratio(redis['p50_ms'], floor['p50_ms']):.2f}x)"
                f"   floor+1RT {floor_rt['p50_ms']:8.2f} ms "
                f"({ratio(redis['p50_ms'], floor_rt['p50_ms']):.2f}x)"
            )
        total = counted[counted_key]["total"]
        line += f"   {total['round_trips']:.2f} round trips, {total['commands']:.1f} commands"
        _say(line)
    redis, floor = figures[f"relay_redis_c{n}"], figures[f"floor_c{n}"]
    floor_rt = figures[f"floor_redis_c{n}"]
    _say(
        f"  {'throughput, ' + str(n) + ' handoffs':<32} Redis {redis['throughput']:8.1f} /s   "
        f"memory {figures[f'relay_c{n}']['throughput']:8.1f} /s   "
        f"floor {floor['throughput']:8.1f} /s "
        f"({ratio(redis['throughput'], floor['throughput']):.2f}x)   "
        f"floor+1RT {floor_rt['throughput']:8.1f} /s "
        f"({ratio(redis['throughput'], floor_rt['throughput']):.2f}x)"
    )
    _say("Redis round trips and commands (counted by redis-server; background taken off)")
    for line in round_trips.lines(counted, n):
        _say(line)


# -- targets --------------------------------------------------------------------------


def evaluate(plan: Plan, measured: Dict[str, Any]) -> Dict[str, Any]:
    f = measured["figures"]
    checks = measured["checks"]
    n = plan.handoffs
    floor_n = f.get(f"floor_c{n}", {})
    relay_n = f.get(f"relay_c{n}", {})
    history = f["relay_by_history"]
    shortest, longest = history[0], history[-1]
    redis_n = f.get(f"relay_redis_c{n}", {})
    delivery = checks["concurrent_delivery"]
    redis_delivery = checks["redis_concurrent_delivery"]
    cpu_n = checks.get(f"cpu_ms_per_turn_c{n}", {})
    redis_cpu_n = checks.get(f"redis_cpu_ms_per_turn_c{n}", {})
    floor_redis_n = f.get(f"floor_redis_c{n}", {})
    floor_redis_cpu_n = checks.get(f"floor_redis_cpu_ms_per_turn_c{n}", {})
    nothing_lost = relay_n.get("errors") == 0 and not _delivery_problems(delivery)
    nothing_lost_redis = redis_n.get("errors") == 0 and not _delivery_problems(redis_delivery)
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
        # The Redis switchboard: the same relayed turns and agent replies, against the
        # floor of this run and against the in-memory switchboard.
        f"relay_p50_over_floor_p50_c{n}": ratio(relay_n.get("p50_ms"), floor_n.get("p50_ms")),
        "redis_relay_p50_over_floor_p50": ratio(
            f["relay_redis_c1"]["p50_ms"], f["floor_c1"]["p50_ms"]
        ),
        f"redis_relay_p50_over_floor_p50_c{n}": ratio(redis_n.get("p50_ms"), floor_n.get("p50_ms")),
        f"redis_relay_throughput_over_floor_c{n}": ratio(
            redis_n.get("throughput"), floor_n.get("throughput")
        ),
        "redis_over_memory_relay_p50": ratio(
            f["relay_redis_c1"]["p50_ms"], f["relay_c1"]["p50_ms"]
        ),
        f"redis_over_memory_relay_p50_c{n}": ratio(redis_n.get("p50_ms"), relay_n.get("p50_ms")),
        f"redis_over_memory_relay_throughput_c{n}": ratio(
            redis_n.get("throughput"), relay_n.get("throughput")
        ),
        "redis_over_memory_agent_reply_p50": ratio(
            f["agent_reply_redis"]["p50_ms"], f["agent_reply"]["p50_ms"]
        ),
        "redis_over_memory_connector_cpu_per_turn": ratio(
            redis_cpu_n.get("rasa_with_connector"), cpu_n.get("rasa_with_connector")
        ),
        f"relay_c{plan.mid_concurrency}_throughput_over_floor": ratio(
            f[f"relay_c{plan.mid_concurrency}"]["throughput"],
            f.get(f"floor_c{plan.mid_concurrency}", {}).get("throughput"),
        ),
        # The floor with one Redis round trip per turn in its first hop: what one round
        # trip costs a bare relay, and the Redis rows against that floor.
        "floor_redis_p50_over_floor_p50": ratio(
            f["floor_redis_c1"]["p50_ms"], f["floor_c1"]["p50_ms"]
        ),
        f"floor_redis_throughput_over_floor_c{n}": ratio(
            floor_redis_n.get("throughput"), floor_n.get("throughput")
        ),
        "redis_relay_p50_over_floor_redis_p50": ratio(
            f["relay_redis_c1"]["p50_ms"], f["floor_redis_c1"]["p50_ms"]
        ),
        f"redis_relay_p50_over_floor_redis_p50_c{n}": ratio(
            redis_n.get("p50_ms"), floor_redis_n.get("p50_ms")
        ),
        f"redis_relay_throughput_over_floor_redis_c{n}": ratio(
            redis_n.get("throughput"), floor_redis_n.get("throughput")
        ),
        "floor_redis_hop1_cpu_over_floor_hop1_per_turn": ratio(
            floor_redis_cpu_n.get("floor_hop1_redis"), cpu_n.get("floor_hop1")
        ),
    }
    if "relay_cluster_c1" in f:
        # The Redis Cluster's rows against one Redis's, measured one after the other.
        cluster_n = f.get(f"relay_cluster_c{n}", {})
        ratios["cluster_over_one_redis_relay_p50"] = ratio(
            f["relay_cluster_c1"]["p50_ms"], f["relay_redis_c1"]["p50_ms"]
        )
        ratios[f"cluster_over_one_redis_relay_p50_c{n}"] = ratio(
            cluster_n.get("p50_ms"), redis_n.get("p50_ms")
        )
        ratios[f"cluster_over_one_redis_relay_throughput_c{n}"] = ratio(
            cluster_n.get("throughput"), redis_n.get("throughput")
        )
        ratios["cluster_over_one_redis_agent_reply_p50"] = ratio(
            f["agent_reply_cluster"]["p50_ms"], f["agent_reply_redis"]["p50_ms"]
        )
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
            f"{n} handoffs with the Redis switchboard: relayed turn p50 at most 1.3x "
            f"the floor's at {n} clients",
            ratios[f"redis_relay_p50_over_floor_p50_c{n}"] <= 1.3,
            f"{ratios[f'redis_relay_p50_over_floor_p50_c{n}']:.2f}x "
            f"({redis_n.get('p50_ms', float('nan')):.1f} ms against "
            f"{floor_n.get('p50_ms', float('nan')):.1f} ms)",
        ),
        _target(
            f"{n} handoffs with the Redis switchboard: nothing lost, order kept per chat",
            nothing_lost_redis,
            f"{redis_delivery['messages']} messages in {redis_delivery['chats']} chats; "
            f"lost in {redis_delivery['chats_with_lost_messages']}, out of order in "
            f"{redis_delivery['chats_out_of_order']}, numbering problems in "
            f"{redis_delivery['chats_with_numbering_problems']}, errors {redis_n.get('errors')}",
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
    parser.add_argument(
        "--no-cluster", action="store_true", help="leave out the rows on a Redis Cluster"
    )
    args = parser.parse_args(argv)
    if redis_program() is None:
        # Before anything starts: the Redis switchboard's rows need one of its own.
        parser.error(
            "redis-server not found: install it (apt-get install redis-server, or "
            "scripts/bootstrap.sh --system-packages as root)"
        )
    plan = QUICK if args.quick else FULL
    out = args.out or RESULTS
    stem = "quick" if args.quick and args.out is None else "latest"
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="rasa-omnidesk-bench-"))
    began = time.monotonic()
    measured = asyncio.run(measure_all(plan, log_dir, cluster=not args.no_cluster))
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
