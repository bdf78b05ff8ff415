"""The README's run command: scripts/run.sh starts everything, serves both pages, stops cleanly."""

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

import pytest

from tests.e2e.stack import ROOT, base_env, ensure_model, free_port, log_tail, port_is_free
from tests.e2e.test_loopback import LOOPBACK, listening_addresses

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 180.0
EXIT_TIMEOUT = 30.0


def read_until_ready(process: "subprocess.Popen[str]", log: Path, deadline: float) -> str:
    """The page URL from run.sh's RUN_READY line; everything it printed goes to ``log``."""
    assert process.stdout is not None
    with open(log, "w") as out:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            out.write(line)
            out.flush()
            if line.startswith("RUN_READY "):
                return line.split(" ", 1)[1].strip()
    raise AssertionError(
        f"scripts/run.sh printed no RUN_READY line (exit status {process.poll()}); "
        f"its output:\n{log_tail(log)}\nand Rasa's log:\n"
        f"{log_tail(ROOT / '.rasa' / 'run-logs' / 'rasa.log')}"
    )


def get_html(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200, f"{url}: {answer.status}"
        assert answer.headers.get_content_type() == "text/html", url
        return str(answer.read().decode("utf-8"))


def test_run_sh_serves_both_pages_and_ctrl_c_stops_everything(artifacts: Path) -> None:
    ensure_model()
    ports: Dict[str, int] = {
        name: free_port() for name in ("RASA_PORT", "ACTIONS_PORT", "SANDBOX_PORT", "PAGE_PORT")
    }
    env = base_env({"CI": "true", **{name: str(port) for name, port in ports.items()}})
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        page_url = read_until_ready(
            process, artifacts / "run-sh.log", time.monotonic() + READY_TIMEOUT
        )
        assert page_url == (
            f"http://127.0.0.1:{ports['PAGE_PORT']}/?server=http://127.0.0.1:{ports['RASA_PORT']}"
        )
        assert 'data-testid="messages"' in get_html(page_url)
        assert "agent desk" in get_html(f"http://127.0.0.1:{ports['SANDBOX_PORT']}/agent")
        for name, port in ports.items():
            listening = listening_addresses(port)
            assert listening and all(a == LOOPBACK for a, _ in listening), (name, listening)

        # Ctrl-C: the script stops what it started and exits.
        os.kill(process.pid, signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/run.sh did not exit within {EXIT_TIMEOUT} s of SIGINT")
        with open(artifacts / "run-sh.log", "a") as out:
            out.write(rest)
        assert "[run] stopped" in rest
        assert process.returncode == 130
        # Nothing it started still holds a port (Rasa's, the actions', the sandbox's, the page's).
        deadline = time.monotonic() + 5
        busy: List[str] = list(ports)
        while busy and time.monotonic() < deadline:
            busy = [name for name, port in ports.items() if not port_is_free(port)]
            time.sleep(0.1)
        assert busy == [], f"still listening after run.sh exited: {busy}"
    finally:
        # Whatever happened, nothing outlives the test: the script's group, then its children's.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
