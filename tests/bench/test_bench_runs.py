"""The benchmark script runs end to end in its quick mode and reports every figure.

It starts real processes (two stacks and the floor's servers), so it is an e2e
test; it checks that the figures, ratios and targets are all there and that no
relayed message was lost, never how fast anything was (the full run reports that).
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

RUN_TIMEOUT = 150

FIGURE_FIELDS = ("p50_ms", "p99_ms", "mean_ms", "throughput")
TARGETS = 7


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
        "hop2_alone",
        "sandbox_alone",
        "bot_turn_wrapped",
        "bot_turn_plain",
        "relay_c1",
        "agent_reply",
        f"relay_c{plan['mid_concurrency']}",
        f"relay_c{plan['handoffs']}",
        f"hop2_alone_c{plan['handoffs']}",
        f"sandbox_alone_c{plan['handoffs']}",
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
        assert isinstance(value, (int, float)) and value > 0, f"ratio {name} is {value!r}"
    targets = quick_run["targets"]
    assert len(targets) == TARGETS
    for target in targets:
        assert target["result"] in {"PASS", "FAIL"}, target
        assert f"{target['result']}  {target['target']}" in quick_run["_stdout"]
    assert quick_run["checks"]["memory"]["bytes_per_handoff"] > 0


def test_no_relayed_message_is_lost_or_reordered(quick_run: Dict[str, Any]) -> None:
    checks = quick_run["checks"]
    delivery = checks["concurrent_delivery"]
    assert delivery["chats"] == quick_run["plan"]["handoffs"]
    assert delivery["chats_with_lost_messages"] == 0, delivery
    assert delivery["chats_out_of_order"] == 0, delivery
    assert delivery["chats_with_numbering_problems"] == 0, delivery
    # The one-client turns reached the agent too (a bot answer would be timed, not relayed).
    single = checks["relay_c1_delivery"]
    assert single["chats"] == quick_run["plan"]["relay_chats"]
    assert single["chats_with_lost_messages"] == 0, single
    assert single["chats_out_of_order"] == 0, single
    assert "history_delivery_problems" not in checks, checks["history_delivery_problems"]


def test_results_name_the_machine_and_come_with_a_plot(quick_run: Dict[str, Any]) -> None:
    machine = quick_run["machine"]
    for field in ("cpu_model", "cores", "ram_gb", "python", "libraries", "date"):
        assert machine[field], f"machine.{field} missing"
    assert machine["libraries"]["rasa"]
    png: Path = quick_run["_png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
