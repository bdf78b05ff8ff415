"""The benchmark script runs end to end in its quick mode and reports every figure.

It starts real processes (three stacks, one on a redis-server of its own, and
the floor's servers), so it is an e2e test; it checks that the figures, ratios
and targets are all there (the Redis switchboard's and the outbox's rows, the
floor with one Redis round trip, the Redis round trips and commands counted per
turn and per agent message, the CPU profile by stage) and that no relayed
message was lost, never how fast anything was (the full run reports that).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.e2e.stack import ROOT

pytestmark = pytest.mark.e2e

# A bound, not the expected time (about 100 s): three Rasa processes start side by side,
# and the counted phases wait for the tracker record (5 s) before and after each.
RUN_TIMEOUT = 360

FIGURE_FIELDS = ("p50_ms", "p99_ms", "mean_ms", "throughput")
TARGETS = 9


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--out",
            str(out),
            "--log-dir",
            str(out / "logs"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, (
        f"bench/run.py --quick failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    )
    results: Dict[str, Any] = json.loads((out / "latest.json").read_text())
    results["_stdout"] = run.stdout
    results["_png"] = out / "latest.png"
    return results


def _assert_measured(name: str, figure: Dict[str, Any]) -> None:
    assert figure["count"] > 0, f"{name}: no turn completed"
    assert figure["errors"] == 0, f"{name}: {figure['errors']} turns failed"
    for field in FIGURE_FIELDS:
        assert isinstance(figure[field], (int, float)) and figure[field] > 0, f"{name}.{field}"


def test_every_path_is_measured(quick_run: Dict[str, Any]) -> None:
    figures = quick_run["figures"]
    plan = quick_run["plan"]
    expected = [
        "floor_c1",
        f"floor_c{plan['mid_concurrency']}",
        f"floor_c{plan['handoffs']}",
        "floor_redis_c1",
        f"floor_redis_c{plan['handoffs']}",
        "hop2_alone",
        "sandbox_alone",
        "bot_turn_wrapped",
        "bot_turn_plain",
        "relay_c1",
        "agent_reply",
        "relay_redis_c1",
        "agent_reply_redis",
        f"relay_c{plan['mid_concurrency']}",
        f"relay_c{plan['handoffs']}",
        f"hop2_alone_c{plan['handoffs']}",
        f"sandbox_alone_c{plan['handoffs']}",
        f"relay_redis_c{plan['handoffs']}",
    ]
    for name in expected:
        assert name in figures, f"no figure {name}; got {sorted(figures)}"
        _assert_measured(name, figures[name])
    history = figures["relay_by_history"]
    assert [h["seeded_events"] for h in history] == plan["history_lengths"]
    assert history[-1]["tracker_events"] >= plan["history_lengths"][-1]
    for entry in history:
        _assert_measured(f"relay with {entry['seeded_events']} events", entry)


def test_every_ratio_and_target_is_reported(quick_run: Dict[str, Any]) -> None:
    ratios = quick_run["ratios"]
    assert len(ratios) >= 10
    for name, value in ratios.items():
        if "_cpu_" in name and value is None:
            # CPU time is counted in clock ticks (10 ms): a quick run's few turns may
            # cost a hop less than one, and a ratio over nothing is not a figure.
            continue
        assert isinstance(value, (int, float)) and value > 0, f"ratio {name} is {value!r}"
    assert sum(value is not None for value in ratios.values()) >= 10
    targets = quick_run["targets"]
    assert len(targets) == TARGETS
    for target in targets:
        assert target["result"] in {"PASS", "FAIL"}, target
        assert f"{target['result']}  {target['target']}" in quick_run["_stdout"]
    assert quick_run["checks"]["memory"]["bytes_per_handoff"] > 0


def test_the_redis_switchboard_is_reported_beside_the_floor(quick_run: Dict[str, Any]) -> None:
    n = quick_run["plan"]["handoffs"]
    ratios = quick_run["ratios"]
    for name in (
        "redis_relay_p50_over_floor_p50",
        f"redis_relay_p50_over_floor_p50_c{n}",
        f"redis_relay_throughput_over_floor_c{n}",
        "redis_over_memory_relay_p50",
        f"redis_over_memory_relay_p50_c{n}",
        "redis_over_memory_agent_reply_p50",
        "floor_redis_p50_over_floor_p50",
        "redis_relay_p50_over_floor_redis_p50",
        f"redis_relay_p50_over_floor_redis_p50_c{n}",
        f"redis_relay_throughput_over_floor_redis_c{n}",
    ):
        assert name in ratios, f"no ratio {name}; got {sorted(ratios)}"
    goal = [t for t in quick_run["targets"] if "Redis switchboard: relayed turn p50" in t["target"]]
    assert len(goal) == 1 and "1.3x" in goal[0]["target"], quick_run["targets"]
    stdout = quick_run["_stdout"]
    assert "the Redis switchboard beside the floor" in stdout
    for row in (f"relayed turn, {n} handoffs", "agent reply through the outbox", "floor+1RT"):
        assert row in stdout, f"no printed row {row!r}"
    assert quick_run["checks"][f"redis_cpu_ms_per_turn_c{n}"], "no CPU figures for the Redis run"
    assert quick_run["checks"][f"floor_redis_cpu_ms_per_turn_c{n}"], "no CPU figures, floor+1RT"


def test_redis_round_trips_and_commands_are_counted(quick_run: Dict[str, Any]) -> None:
    counted = quick_run["redis_round_trips"]
    plan = quick_run["plan"]
    assert counted["open_handoffs"] >= plan["handoffs"]
    for key, units in (
        ("relayed_turn_c1", plan["count_relay_turns"]),
        ("relayed_turn_n", plan["handoffs"]),
        ("agent_message", plan["count_agent_messages"]),
    ):
        phase = counted[key]
        assert phase["units"] == units, (key, phase["units"])
        during = phase["in_turns"]
        # Both paths store something in Redis: a relayed turn at least its lease, an agent
        # message at least its outbox entry. A round trip is at least one command.
        assert during["round_trips"] >= 1, (key, during)
        assert during["commands"] >= during["round_trips"], (key, during)
        assert during["by_command"], (key, during)
        for part in ("deferred", "total"):
            assert phase[part]["round_trips"] is not None, (key, part)
        assert phase["measured"]["in_turns"]["seconds"] > 0
    for which in ("sweeper_running", "sweeper_held"):
        assert counted["background_per_second"][which]["seconds"] == 1.0
    # One of each, request by request: a relayed turn and an agent message both reach Redis.
    for key in ("relayed_turn", "agent_message"):
        assert counted["traces"][key], key
    stdout = quick_run["_stdout"]
    assert "Redis round trips and commands" in stdout
    assert "one relayed turn as redis-server ran it" in stdout
    for row in (
        "per relayed turn, 1 client",
        f"per relayed turn, {plan['handoffs']} handoffs",
        "per agent message",
        "in the turn:",
    ):
        assert row in stdout, f"no printed row {row!r}"


def test_the_rasa_processes_are_profiled_by_stage(quick_run: Dict[str, Any]) -> None:
    profiles = quick_run["cpu_profiles"]
    for which in ("memory", "redis"):
        profile = profiles[which]
        assert profile["errors"] == 0, which
        assert (
            profile["turns"] == quick_run["plan"]["handoffs"] * quick_run["plan"]["profile_turns"]
        )
        assert Path(profile["profile"]).is_file(), profile["profile"]
        shares = {stage["stage"]: stage["share"] for stage in profile["stages"]}
        assert abs(sum(shares.values()) - 1.0) < 1e-6, shares
        # Every relayed turn goes through Sanic, the connector and aiohttp's client.
        for stage in ("Sanic and HTTP parsing", "the connector", "aiohttp client"):
            assert shares[stage] > 0, (which, stage, shares)
        assert profile["top_own"] and profile["top_cumulative"], which
    assert dict((s["stage"], s["share"]) for s in profiles["redis"]["stages"])["redis client"] > 0
    stdout = quick_run["_stdout"]
    assert "Rasa with the connector, redis" in stdout and "top by cumulative time" in stdout


def test_no_relayed_message_is_lost_or_reordered(quick_run: Dict[str, Any]) -> None:
    checks = quick_run["checks"]
    delivery = checks["concurrent_delivery"]
    assert delivery["chats"] == quick_run["plan"]["handoffs"]
    assert delivery["chats_with_lost_messages"] == 0, delivery
    assert delivery["chats_out_of_order"] == 0, delivery
    assert delivery["chats_with_numbering_problems"] == 0, delivery
    on_redis = checks["redis_concurrent_delivery"]
    assert on_redis["chats"] == quick_run["plan"]["handoffs"]
    assert on_redis["chats_with_lost_messages"] == 0, on_redis
    assert on_redis["chats_out_of_order"] == 0, on_redis
    assert on_redis["chats_with_numbering_problems"] == 0, on_redis
    # The one-client turns reached the agent too (a bot answer would be timed, not relayed).
    single = checks["relay_c1_delivery"]
    assert single["chats"] == quick_run["plan"]["relay_chats"]
    assert single["chats_with_lost_messages"] == 0, single
    assert single["chats_out_of_order"] == 0, single
    single_redis = checks["relay_redis_c1_delivery"]
    assert single_redis["chats"] == quick_run["plan"]["relay_chats"]
    assert single_redis["chats_with_lost_messages"] == 0, single_redis
    assert single_redis["chats_out_of_order"] == 0, single_redis
    assert "history_delivery_problems" not in checks, checks["history_delivery_problems"]


def test_results_name_the_machine_and_come_with_a_plot(quick_run: Dict[str, Any]) -> None:
    machine = quick_run["machine"]
    for field in ("cpu_model", "cores", "ram_gb", "python", "libraries", "date"):
        assert machine[field], f"machine.{field} missing"
    assert machine["libraries"]["rasa"]
    png: Path = quick_run["_png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
