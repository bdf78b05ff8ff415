"""CPU time a process spent, from /proc: what a turn costs each server, whatever else runs.

Latency on a shared machine moves with other work; the CPU seconds a server
process burns per turn do not, so they split a relayed turn between its hops
more steadily than timings can.
"""

import os
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> Optional[float]:
    """User plus system CPU of every thread of ``pid``; None where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


@contextmanager
def cpu_used(pids: Dict[str, int], into: Dict[str, Optional[float]]) -> Iterator[None]:
    """Fill ``into[name]`` with the CPU seconds each process spent inside the block."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    yield
    for name, pid in pids.items():
        start, end = before[name], cpu_seconds(pid)
        into[name] = None if start is None or end is None else end - start
