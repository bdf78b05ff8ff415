"""The benchmark's profile: the hook profiles a process on request, the summary splits it by stage.

The hook (bench/profile_hook/sitecustomize.py) is tested in a real Python
process started with its environment, as the benchmark starts Rasa; the
summary on a profile of real calls (the standard library's json).
"""

import asyncio
import cProfile
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import cpu_profile

# Busy in a loop until stopped, printing once it is running (the hook is in place by then).
BUSY = """
import json, sys, time
print("running", flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    json.dumps({"text": "a relayed turn", "number": 2})
"""


async def test_the_hook_profiles_a_process_between_two_signals(tmp_path: Path) -> None:
    into = tmp_path / "profiles"
    env = {**cpu_profile.hook_env(into, ""), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-c", BUSY], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "running"
        profiling = cpu_profile.Profiling(process.pid, into)
        profiling.start()
        await asyncio.sleep(0.5)
        written = await profiling.stop()
    finally:
        process.kill()
        process.wait()
    assert written.parent == into and written.suffix == ".prof"
    summary = cpu_profile.summarise(written, turns=100)
    json_share = next(s["share"] for s in summary["stages"] if s["stage"] == "JSON")
    assert json_share > 0.3, summary["stages"]


def test_a_process_without_the_variable_is_not_profiled(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(cpu_profile.HOOK_DIR), "PATH": "/usr/bin:/bin"}
    check = "import signal; print(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL)"
    ran = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
    )
    assert ran.stdout.strip() == "True"


def _encode_many() -> None:
    for i in range(2000):
        json.dumps({"turn": i, "text": "a relayed turn" * 3})


def test_stages_add_up_and_builtins_count_to_their_callers(tmp_path: Path) -> None:
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    _encode_many()
    profile.disable()
    path = tmp_path / "json.prof"
    profile.dump_stats(str(path))

    summary = cpu_profile.summarise(path, turns=2000, cpu_ms_per_turn=0.5)
    shares = {s["stage"]: s["share"] for s in summary["stages"]}
    assert set(shares) == set(cpu_profile.STAGE_NAMES)
    assert abs(sum(shares.values()) - 1.0) < 1e-6
    # json's C encoder has no file of its own: it counts to json/encoder.py, its caller.
    assert shares["JSON"] > 0.5, shares
    assert abs(sum(s["ms_per_turn"] for s in summary["stages"]) - 0.5) < 1e-6
    dumps = [t for t in summary["top_cumulative"] if t["function"].endswith("(dumps)")]
    assert dumps and dumps[0]["calls_per_turn"] == 1.0
    assert summary["top_own"] and all(t["own_ms_per_turn"] >= 0 for t in summary["top_own"])
    printed = "\n".join(cpu_profile.lines("json", summary))
    assert "JSON" in printed and "top by own time" in printed


def test_files_name_their_stage() -> None:
    site = "/venv/lib/python3.10/site-packages"
    assert cpu_profile.stage_of_path("/repo/connectors/omnidesk/channel/relay.py") == (
        "the connector"
    )
    assert cpu_profile.stage_of_path(f"{site}/redis/asyncio/connection.py") == "redis client"
    assert cpu_profile.stage_of_path(f"{site}/sanic/http.py") == "Sanic and HTTP parsing"
    assert cpu_profile.stage_of_path("http1_request_header") == "Sanic and HTTP parsing"
    assert cpu_profile.stage_of_path(f"{site}/rasa/core/lock_store.py") == "Rasa's lock store"
    assert cpu_profile.stage_of_path(f"{site}/aiohttp/client.py") == "aiohttp client"
    assert cpu_profile.stage_of_path("/usr/lib/python3.10/logging/__init__.py") == "logging"
    assert cpu_profile.stage_of_path("/usr/lib/python3.10/uuid.py") is None
    assert cpu_profile.stage_of_path(f"{site}/rasa/shared/utils/common.py") is None


def test_recursive_helpers_count_to_the_stage_that_called_them(tmp_path: Path) -> None:
    # A module whose file says "the connector", calling the standard library's
    # deepcopy, which recurses through helpers of no stage.
    module_dir = tmp_path / "connectors" / "omnidesk"
    module_dir.mkdir(parents=True)
    (module_dir / "copying.py").write_text(
        "import copy\n\n"
        "def copy_many():\n"
        "    nested = {'a': [{'b': [1, 2, {'c': [3] * 20}]}] * 20}\n"
        "    for _ in range(200):\n"
        "        copy.deepcopy(nested)\n"
    )
    spec = importlib.util.spec_from_file_location("copying", module_dir / "copying.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    module.copy_many()
    profile.disable()
    path = tmp_path / "copy.prof"
    profile.dump_stats(str(path))

    shares = {s["stage"]: s["share"] for s in cpu_profile.summarise(path, turns=200)["stages"]}
    assert shares["the connector"] > 0.95, shares
