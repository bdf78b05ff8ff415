"""The machine a run came from, so figures are never quoted without it."""

import datetime
import os
import platform
import sys
from importlib import metadata
from typing import Any, Dict, Optional

LIBRARIES = ("rasa", "rasa-sdk", "sanic", "aiohttp", "python-socketio", "redis", "matplotlib")


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe() -> Dict[str, Any]:
    ram = _ram_bytes()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(ram / 2**30, 1) if ram else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        # Other work on the machine skews every figure: the load when the run began.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
