"""Injected faults: how the sandbox misbehaves on purpose, per endpoint, for tests.

A fault is chosen before the call is handled. It may delay the call, answer a
status instead of handling it (for the next `count` calls, or with a probability),
hang without answering, or drop the connection. With `process_first` the call is
handled (state changes) and only then is the answer replaced by the fault, the
case where the request reached Omnidesk but its answer never came back.
"""

import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

ENDPOINTS = (
    "notifyUserNewChatMessage",
    "addAttachment",
    "notifyUserNewChatEvent",
    "notifyUserEndChat",
    "chatbot",
    "requestChatConfig",
)


class FaultSpecError(ValueError):
    """A fault specification is invalid; the message names the field."""


@dataclass
class Fault:
    endpoint: str  # one of ENDPOINTS, or "*"
    latency_ms: int = 0
    status: Optional[int] = None
    count: Optional[int] = None  # None: until cleared
    error_rate: float = 0.0
    hang_seconds: Optional[float] = None
    drop: bool = False
    retry_after: Optional[int] = None
    process_first: bool = False

    def to_json(self) -> Dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "latency_ms": self.latency_ms,
            "status": self.status,
            "count": self.count,
            "error_rate": self.error_rate,
            "hang_seconds": self.hang_seconds,
            "drop": self.drop,
            "retry_after": self.retry_after,
            "process_first": self.process_first,
        }


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one call: delay it, and maybe answer `status`, hang or drop."""

    latency_ms: int = 0
    status: Optional[int] = None
    retry_after: Optional[int] = None
    hang_seconds: Optional[float] = None
    drop: bool = False
    process_first: bool = False

    @property
    def replaces_answer(self) -> bool:
        return self.status is not None or self.hang_seconds is not None or self.drop

    def describe(self) -> Optional[str]:
        parts: List[str] = []
        if self.latency_ms:
            parts.append(f"latency {self.latency_ms} ms")
        if self.status is not None:
            parts.append(f"status {self.status}")
        if self.hang_seconds is not None:
            parts.append(f"hang {self.hang_seconds:g} s")
        if self.drop:
            parts.append("dropped connection")
        if parts and self.process_first and self.replaces_answer:
            parts.append("after handling the call")
        return ", ".join(parts) or None


def parse_fault(spec: Mapping[str, Any], default_hang_seconds: float) -> Fault:
    """Build a Fault from the control API's JSON (or the Python helper's keywords)."""
    endpoint = spec.get("endpoint")
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise FaultSpecError(f"endpoint: must be '*' or one of {', '.join(ENDPOINTS)}")

    def number(name: str, low: float, high: float) -> Optional[float]:
        value = spec.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FaultSpecError(f"{name}: must be a number, got {value!r}")
        if not low <= value <= high:
            raise FaultSpecError(f"{name}: must be between {low:g} and {high:g}, got {value}")
        return float(value)

    latency = number("latency_ms", 0, 600_000)
    status = number("status", 100, 599)
    count = number("count", 1, 1_000_000)
    error_rate = number("error_rate", 0, 1)
    hang = number("hang_seconds", 0.01, 3600)
    retry_after = number("retry_after", 0, 86_400)
    if spec.get("hang") and hang is None:
        hang = default_hang_seconds
    for flag in ("drop", "hang", "process_first"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise FaultSpecError(f"{flag}: must be true or false")
    fault = Fault(
        endpoint=str(endpoint),
        latency_ms=int(latency or 0),
        status=None if status is None else int(status),
        count=None if count is None else int(count),
        error_rate=error_rate or 0.0,
        hang_seconds=hang,
        drop=bool(spec.get("drop", False)),
        retry_after=None if retry_after is None else int(retry_after),
        process_first=bool(spec.get("process_first", False)),
    )
    if not (
        fault.latency_ms or fault.status or fault.error_rate or fault.hang_seconds or fault.drop
    ):
        raise FaultSpecError(
            "fault: give at least one of latency_ms, status, error_rate, hang/hang_seconds, drop"
        )
    return fault


class FaultBook:
    """The faults in force. `rng` is a random.Random so tests can seed it."""

    def __init__(self, seed: Optional[int] = None) -> None:
        self.faults: List[Fault] = []
        self.rng = random.Random(seed)  # noqa: S311 -- fault injection, not security

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)

    def clear(self) -> None:
        self.faults.clear()

    def decide(self, endpoint: str) -> FaultDecision:
        """Pick the fault for one call to `endpoint`, using up counted faults."""
        latency = 0
        status: Optional[int] = None
        retry_after: Optional[int] = None
        hang: Optional[float] = None
        drop = False
        process_first = False
        for fault in list(self.faults):
            if fault.endpoint not in ("*", endpoint):
                continue
            latency = max(latency, fault.latency_ms)
            hit = False
            if fault.hang_seconds is not None and hang is None:
                hang, hit = fault.hang_seconds, True
            if fault.drop and not drop:
                drop, hit = True, True
            if status is None and fault.status is not None:
                status, hit = fault.status, True
            if status is None and fault.error_rate and self.rng.random() < fault.error_rate:
                status, hit = 500, True
            if hit:
                retry_after = fault.retry_after if retry_after is None else retry_after
                process_first = process_first or fault.process_first
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
        return FaultDecision(latency, status, retry_after, hang, drop, process_first)
