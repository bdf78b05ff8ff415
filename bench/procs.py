"""Start a server process that prints ``ready port=N`` and stop it again."""

import os
import re
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

READY = re.compile(r"ready port=(\d+)")


class ServerProcess:
    def __init__(
        self, args: List[str], *, env: Optional[Dict[str, str]] = None, timeout: float = 60.0
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.port = self._wait_ready(timeout)
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        seen: List[str] = []
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = READY.search(line)
            if match:
                # Keep reading what it prints, or a full pipe would block the server.
                threading.Thread(target=self._drain, daemon=True).start()
                return int(match.group(1))
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(seen[-30:]))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
