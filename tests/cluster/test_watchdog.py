"""The watchdog stops a cluster's processes when the test process dies without its teardown."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.stack import ROOT, base_env

pytestmark = pytest.mark.cluster

# A stand-in for a test process: starts a watchdog and a long sleep it watches,
# prints the sleep's pid, then waits to be killed.
OWNER = """
import json, subprocess, sys, time
from pathlib import Path
from tests.cluster.cluster import Watchdog
from tests.e2e.stack import base_env, launch
log_dir = Path(sys.argv[1])
watchdog = Watchdog.start(log_dir, limit=float(sys.argv[2]))
sleeper = launch("a sleep", ["sleep", "600"], log_dir / "sleep.log", base_env())
(log_dir / "data").mkdir()
watchdog.watch([sleeper], [log_dir / "data"])
print(json.dumps({"sleeper": sleeper.popen.pid, "watchdog": watchdog.process.popen.pid}), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by its new parent yet) is not running.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("limit, kill_owner", [(600.0, True), (1.0, False)])
def test_the_watchdog_stops_what_it_watches(tmp_path: Path, limit: float, kill_owner: bool) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path), str(limit)],
        cwd=ROOT,
        env=base_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pids = json.loads(owner.stdout.readline())
        assert alive(pids["sleeper"])
        if kill_owner:
            owner.send_signal(signal.SIGKILL)
            owner.wait(5)
        # Either way (the owner gone, or the limit reached) the watchdog acts.
        assert wait_gone(pids["sleeper"], 15), "the watched process outlived its owner"
        assert wait_gone(pids["watchdog"], 15)
        assert not (tmp_path / "data").exists()
    finally:
        owner.kill()
        owner.wait(5)
