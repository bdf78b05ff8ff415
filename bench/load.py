"""Load generation and statistics shared by every benchmark.

A benchmark is a coroutine factory ``turn(i) -> awaitable``; ``measure`` runs it
sequentially for latency and with N workers for throughput, on loopback only,
bounded in count and time.
"""

import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional

Turn = Callable[[int], Awaitable[None]]


@dataclass
class Figures:
    name: str
    concurrency: int
    count: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # completed turns per second
    errors: int
    max_ms: float = float("nan")
    # What the failed turns raised, "Type: message" (the message cut short), and how often.
    error_kinds: Dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def percentile(samples: List[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def measure(
    name: str,
    turn: Turn,
    *,
    count: int,
    concurrency: int = 1,
    warmup: int = 20,
    time_limit: float = 120.0,
) -> Figures:
    """Run ``count`` turns with ``concurrency`` workers; latency per turn, throughput overall."""
    for i in range(warmup):
        await turn(-1 - i)
    latencies: List[float] = []
    errors = 0
    kinds: Counter[str] = Counter()
    next_index = 0
    deadline = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < count and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            try:
                await turn(i)
            except Exception as error:
                errors += 1
                _note(kinds, error)
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return _figures(name, concurrency, latencies, elapsed, errors, kinds)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> float:
    if not numerator or not denominator:
        return float("nan")
    return numerator / denominator


SessionTurn = Callable[[int, int], Awaitable[None]]


async def measure_sessions(
    name: str,
    turn: SessionTurn,
    *,
    sessions: int,
    turns_per_session: int,
    time_limit: float = 120.0,
) -> Figures:
    """One worker per session, each sending its turns one after the other.

    Turns of one session never overlap, so the order the receiver records can be
    checked against the order they were sent; ``sessions`` is the concurrency.
    """
    latencies: List[float] = []
    errors = 0
    kinds: Counter[str] = Counter()
    deadline = time.monotonic() + time_limit

    async def worker(session: int) -> None:
        nonlocal errors
        for sequence in range(turns_per_session):
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            try:
                await turn(session, sequence)
            except Exception as error:
                errors += 1
                _note(kinds, error)
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(session) for session in range(sessions)))
    elapsed = time.perf_counter() - started
    return _figures(name, sessions, latencies, elapsed, errors, kinds)


async def measure_paced(
    name: str,
    turn: Turn,
    *,
    count: int,
    interval: float,
    time_limit: float = 60.0,
) -> Figures:
    """Sequential turns, one every ``interval`` seconds at most, for latency.

    Pacing spreads the turns over time, so background work the server does
    periodically (the tracker record) falls inside the measured window.
    """
    latencies: List[float] = []
    errors = 0
    kinds: Counter[str] = Counter()
    deadline = time.monotonic() + time_limit
    started_all = time.perf_counter()
    for i in range(count):
        if time.monotonic() >= deadline:
            break
        started = time.perf_counter()
        try:
            await turn(i)
        except Exception as error:
            errors += 1
            _note(kinds, error)
        else:
            latencies.append((time.perf_counter() - started) * 1000)
        rest = interval - (time.perf_counter() - started)
        if rest > 0:
            await asyncio.sleep(rest)
    elapsed = time.perf_counter() - started_all
    return _figures(name, 1, latencies, elapsed, errors, kinds)


def _note(kinds: "Counter[str]", error: Exception) -> None:
    kinds[f"{type(error).__name__}: {str(error)[:160]}"] += 1


def _figures(
    name: str,
    concurrency: int,
    latencies: List[float],
    elapsed: float,
    errors: int,
    kinds: "Optional[Counter[str]]" = None,
) -> Figures:
    return Figures(
        name=name,
        concurrency=concurrency,
        count=len(latencies),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        mean_ms=statistics.fmean(latencies) if latencies else float("nan"),
        throughput=len(latencies) / elapsed if elapsed > 0 else float("nan"),
        errors=errors,
        max_ms=max(latencies) if latencies else float("nan"),
        error_kinds=dict((kinds or Counter()).most_common(5)),
    )


def figures_from(name: str, latencies: List[float], elapsed: float, errors: int = 0) -> Figures:
    """Figures for latencies measured elsewhere (paired runs), at concurrency 1."""
    return _figures(name, 1, latencies, elapsed, errors)


async def measure_interleaved(
    turns: Dict[str, Turn],
    *,
    count: int,
    pace: float,
    warmup: int = 10,
    time_limit: float = 120.0,
    seed: int = 11,
) -> Dict[str, Figures]:
    """Sequential turns of several paths, one of each per round, in random order.

    Latencies of paths compared with each other are taken side by side, so other
    work on the machine and drift fall on all of them alike. Throughput here is
    1000 / mean latency: what one client waiting for each answer gets.
    """
    rng = random.Random(seed)
    names = list(turns)
    latencies: Dict[str, List[float]] = {name: [] for name in names}
    errors: Dict[str, int] = {name: 0 for name in names}
    deadline = time.monotonic() + time_limit
    for i in range(-warmup, count):
        if time.monotonic() >= deadline:
            break
        rng.shuffle(names)
        for name in names:
            started = time.perf_counter()
            try:
                await turns[name](i)
            except Exception:
                errors[name] += 1
            else:
                if i >= 0:
                    latencies[name].append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(pace)
    return {
        name: _figures(name, 1, latencies[name], sum(latencies[name]) / 1000, errors[name])
        for name in turns
    }
