"""Where a relayed turn's CPU goes in the Rasa process: a cProfile, summarised by stage.

bench/profile_hook/sitecustomize.py runs in the Rasa processes the benchmark
starts: ``Profiling(pid, directory)`` asks it to start (SIGUSR1) and to stop
and write the profile (SIGUSR2), and waits, bounded, for the file. The profile
is of the main thread (the event loop) on that thread's CPU clock.

``summarise`` splits the profile's own time into stages by the file each
function lives in (Sanic, the connector, redis-py, aiohttp, logging, JSON,
Rasa's lock store, ...). A function of no stage (a C builtin such as
``socket.send`` or ``json``'s encoder, or the standard library's helpers such
as ``uuid`` or ``dataclasses``) is counted to the stages of its callers, in
proportion to the time each caller spent in it, so the stages add up to the
whole. It also lists the top functions by own and by cumulative time, with
calls per turn (exact: cProfile counts every call).
"""

import os
import pstats
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

PROFILE_DIR_ENV = "RASA_OMNIDESK_BENCH_PROFILE_DIR"
HOOK_DIR = Path(__file__).resolve().parent / "profile_hook"
WRITE_TIMEOUT = 30.0  # seconds for the process to write its profile after SIGUSR2
TOP = 12

Func = Tuple[str, int, str]

# First match wins: a path fragment of the function's file names its stage.
STAGES: List[Tuple[str, Tuple[str, ...]]] = [
    ("the connector", ("/connectors/omnidesk/",)),
    ("Rasa's lock store", ("/rasa/core/lock_store.py", "/rasa/core/lock.py")),
    (
        "Rasa's tracker store and events",
        ("/rasa/core/tracker_store.py", "/rasa/shared/core/"),
    ),
    ("Rasa's server and channels", ("/rasa/", "/rasa_sdk/")),
    (
        "Sanic and HTTP parsing",
        ("/sanic/", "/sanic_routing/", "/sanic_cors/", "/httptools/", "/websockets/"),
    ),
    ("redis client", ("/redis/",)),
    (
        "aiohttp client",
        ("/aiohttp/", "/yarl/", "/multidict/", "/aiosignal/", "/frozenlist/", "/async_timeout/"),
    ),
    ("metrics (prometheus_client)", ("/prometheus_client/",)),
    ("logging", ("/logging/", "/structlog/", "/coloredlogs/")),
    ("JSON", ("/json/", "/ujson", "/orjson")),
    ("event loop and sockets", ("/asyncio/", "/uvloop/", "/selectors.py", "/socket.py")),
]
# Helpers of every stage count to their callers: Rasa's utilities (events are resolved
# by walking Event's subclasses in rasa/shared/utils/common.py, for the tracker).
HELPERS = ("/rasa/shared/utils/", "/rasa/utils/")
OTHER = "other"
STAGE_NAMES = [name for name, _ in STAGES] + [OTHER]
SANIC = "Sanic and HTTP parsing"
AIOHTTP = "aiohttp client"
# Code compiled at run time has a made-up file name: Sanic compiles its request
# handling and sanic-routing its router ("") this way, attrs aiohttp's classes.
GENERATED = {
    "": SANIC,
    "connection_task": SANIC,
    "handle_request": SANIC,
    "http1_request_header": SANIC,
    "http1_response_header": SANIC,
    "send": SANIC,
    "read": SANIC,
    "_run_request_middleware": SANIC,
    "_run_response_middleware": SANIC,
}


class ProfileError(RuntimeError):
    """The process did not write its profile; the message says where it was expected."""


def hook_env(directory: Path, pythonpath: str) -> Dict[str, str]:
    """What a process needs to be profiled on request: the hook first on its PYTHONPATH."""
    return {
        PROFILE_DIR_ENV: str(directory),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK_DIR), pythonpath])),
    }


class Profiling:
    """Start and stop the hook's cProfile in process ``pid``; ``stop()`` returns the file."""

    def __init__(self, pid: int, directory: Path) -> None:
        self.pid = pid
        self.directory = directory
        self._before: Set[str] = set()

    def start(self) -> None:
        self._before = set(self._written())
        os.kill(self.pid, signal.SIGUSR1)

    def _written(self) -> List[str]:
        try:
            return [n for n in os.listdir(self.directory) if n.startswith(f"{self.pid}-")]
        except FileNotFoundError:
            return []

    async def stop(self) -> Path:
        import asyncio

        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + WRITE_TIMEOUT
        while time.monotonic() < deadline:
            new = [n for n in self._written() if n not in self._before and n.endswith(".prof")]
            if new:
                return self.directory / sorted(new)[-1]
            await asyncio.sleep(0.1)
        raise ProfileError(
            f"process {self.pid} wrote no profile into {self.directory} within "
            f"{WRITE_TIMEOUT:.0f} s of SIGUSR2; is {HOOK_DIR} first on its PYTHONPATH and "
            f"{PROFILE_DIR_ENV} set?"
        )


def stage_of_path(path: str) -> Optional[str]:
    if path in GENERATED:
        return GENERATED[path]
    if path.startswith("<attrs generated") and " aiohttp." in path:
        return AIOHTTP
    normal = path.replace("\\", "/")
    if any(fragment in normal for fragment in HELPERS):
        return None
    for name, fragments in STAGES:
        if any(fragment in normal for fragment in fragments):
            return name
    return None


def _label(func: Func) -> str:
    path, line, name = func
    if path == "~":
        return name
    normal = path.replace("\\", "/")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in normal:
            normal = normal.split(marker, 1)[1]
            if marker == "/lib/python3":
                normal = normal.split("/", 1)[-1]  # drop "10/" of "python3.10/"
            break
    else:
        root = str(Path(__file__).resolve().parents[1]).replace("\\", "/") + "/"
        normal = normal.replace(root, "")
    return f"{normal}:{line}({name})"


class _Stages:
    """Each function's share of each stage, through its callers where it has none itself.

    A stage-less function called by itself (recursion, or two helpers calling each
    other) counts to the callers that entered the cycle; a share found while a
    cycle was cut short is not kept, so it is worked out again from each entry.
    """

    MAX_DEPTH = 60

    def __init__(self, stats: Dict[Func, Any]) -> None:
        self.stats = stats
        self._memo: Dict[Func, Dict[str, float]] = {}
        self._open: Set[Func] = set()

    def of(self, func: Func) -> Dict[str, float]:
        shares, _ = self._resolve(func)
        return shares or {OTHER: 1.0}

    def _resolve(self, func: Func) -> Tuple[Dict[str, float], bool]:
        """(shares, complete): complete when no cycle or depth limit cut the walk short."""
        found = self._memo.get(func)
        if found is not None:
            return found, True
        own = None if func[0] == "~" else stage_of_path(func[0])
        if own is not None:
            self._memo[func] = {own: 1.0}
            return self._memo[func], True
        if func in self._open or len(self._open) >= self.MAX_DEPTH:
            return {}, False
        callers: Dict[Func, Any] = self.stats[func][4] if func in self.stats else {}
        if not callers:
            self._memo[func] = {OTHER: 1.0}
            return self._memo[func], True
        weights = {caller: float(values[2]) for caller, values in callers.items()}
        if sum(weights.values()) <= 0:
            # No time through any caller: count by calls.
            weights = {caller: float(values[1]) for caller, values in callers.items()}
        self._open.add(func)
        try:
            total, complete = 0.0, True
            summed: Dict[str, float] = {}
            for caller, weight in weights.items():
                shares, whole = self._resolve(caller)
                complete = complete and whole
                if not shares or weight <= 0:
                    continue
                total += weight
                for stage, share in shares.items():
                    summed[stage] = summed.get(stage, 0.0) + share * weight
        finally:
            self._open.discard(func)
        result = {stage: value / total for stage, value in summed.items()} if total > 0 else {}
        if complete:
            self._memo[func] = result
        return result, complete


def summarise(
    path: Path, turns: int, cpu_ms_per_turn: Optional[float] = None, top: int = TOP
) -> Dict[str, Any]:
    """Stages and top functions of the profile at ``path``, per turn.

    ``cpu_ms_per_turn``: the process's CPU per turn measured without the
    profiler; each stage's share of the profile is also given in milliseconds
    of it (the profiler's own overhead falls on every call, so its milliseconds
    are larger than the process's).
    """
    raw: Dict[Func, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    stages = _Stages(raw)
    total = sum(values[2] for values in raw.values())
    by_stage: Dict[str, float] = dict.fromkeys(STAGE_NAMES, 0.0)
    for func, values in raw.items():
        for stage, share in stages.of(func).items():
            by_stage[stage] = by_stage.get(stage, 0.0) + values[2] * share
    per_turn = 1000.0 / turns if turns > 0 else float("nan")

    def row(func: Func) -> Dict[str, Any]:
        _, calls, own, cumulative, _ = raw[func]
        return {
            "function": _label(func),
            "stage": max(stages.of(func).items(), key=lambda item: item[1])[0],
            "calls_per_turn": calls / turns if turns > 0 else None,
            "own_ms_per_turn": own * per_turn,
            "cumulative_ms_per_turn": cumulative * per_turn,
            "own_share": own / total if total else None,
        }

    by_own = sorted(raw, key=lambda f: raw[f][2], reverse=True)[:top]
    by_cumulative = sorted(raw, key=lambda f: raw[f][3], reverse=True)[:top]
    return {
        "profile": str(path),
        "turns": turns,
        "profiled_ms_per_turn": total * per_turn,
        "cpu_ms_per_turn_unprofiled": cpu_ms_per_turn,
        "stages": [
            {
                "stage": stage,
                "share": seconds / total if total else None,
                "profiled_ms_per_turn": seconds * per_turn,
                "ms_per_turn": (
                    seconds / total * cpu_ms_per_turn if total and cpu_ms_per_turn else None
                ),
            }
            for stage, seconds in sorted(by_stage.items(), key=lambda item: -item[1])
        ],
        "top_own": [row(func) for func in by_own],
        "top_cumulative": [row(func) for func in by_cumulative],
    }


def lines(name: str, summary: Dict[str, Any], top: int = 8) -> List[str]:
    """The printed form: stages, then the top functions by own and by cumulative time."""
    unprofiled = summary.get("cpu_ms_per_turn_unprofiled")
    out = [
        f"  {name}: {summary['turns']} turns, {summary['profiled_ms_per_turn']:.2f} ms of "
        "profiled CPU per turn" + (f" (unprofiled {unprofiled:.2f} ms)" if unprofiled else "")
    ]
    for stage in summary["stages"]:
        if not stage["share"]:
            continue
        ms = stage["ms_per_turn"]
        out.append(
            f"    {stage['stage']:<34} {stage['share'] * 100:5.1f}%"
            + (f"   {ms:6.3f} ms/turn" if ms is not None else "")
        )
    for title, key, field in (
        ("top by own time", "top_own", "own_ms_per_turn"),
        ("top by cumulative time", "top_cumulative", "cumulative_ms_per_turn"),
    ):
        out.append(f"    {title} (profiled ms per turn, calls per turn):")
        for entry in summary[key][:top]:
            out.append(
                f"      {entry[field]:7.3f}  {entry['calls_per_turn']:7.2f}  {entry['function']}"
            )
    return out


def main() -> None:
    """Summarise a profile the benchmark kept: ``python -m bench.cpu_profile FILE --turns N``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("profile", type=Path, help="a .prof file from the run's profiles/")
    parser.add_argument("--turns", type=int, required=True, help="turns the profile spans")
    parser.add_argument("--cpu-ms", type=float, default=None, help="unprofiled CPU ms per turn")
    parser.add_argument("--top", type=int, default=20, help="functions listed in each top list")
    args = parser.parse_args()
    summary = summarise(args.profile, args.turns, args.cpu_ms, top=args.top)
    print("\n".join(lines(str(args.profile), summary, top=args.top)))


if __name__ == "__main__":
    main()
