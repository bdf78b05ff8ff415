"""How often a customer may call the customer routes: a rate limit and a typing debounce.

Each call to ``/upload``, ``/event`` or the socket.io ``customer_event`` costs a
call to Omnidesk, on our quota. The limits are per conversation and per process
(a customer's calls land on one replica while its socket or backend keeps its
connection; across replicas the limit is at most the number of replicas times
this). Plain classes with an injectable clock, so tests need no sleeping.
"""

import time
from typing import Callable, Dict, Tuple

Clock = Callable[[], float]

# A customer may make this many calls at once, then one per REFILL_SECONDS.
CUSTOMER_BURST = 20
CUSTOMER_REFILL_SECONDS = 1.0
# The same typing event again within this many seconds is answered ok, not relayed.
TYPING_DEBOUNCE_SECONDS = 2.0
TYPING_EVENTS = frozenset({"startedtyping", "stoppedtyping"})
# Above this many conversations tracked, idle ones are forgotten.
MAX_TRACKED = 10_000


class RateLimit:
    """A token bucket per conversation."""

    def __init__(
        self,
        burst: int = CUSTOMER_BURST,
        refill_seconds: float = CUSTOMER_REFILL_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._burst = float(burst)
        self._refill = refill_seconds
        self._clock = clock
        self._buckets: Dict[str, Tuple[float, float]] = {}

    def allow(self, conversation_id: str) -> bool:
        """Take one call from the conversation's bucket; False when it is empty."""
        now = self._clock()
        tokens, last = self._buckets.get(conversation_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) / self._refill)
        if tokens < 1.0:
            self._buckets[conversation_id] = (tokens, now)
            return False
        self._buckets[conversation_id] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_TRACKED:
            self._forget_full(now)
        return True

    def retry_after(self, conversation_id: str) -> float:
        tokens, _ = self._buckets.get(conversation_id, (self._burst, 0.0))
        return max(0.0, (1.0 - tokens) * self._refill)

    def _forget_full(self, now: float) -> None:
        full_after = self._burst * self._refill
        for key in [k for k, (_, last) in self._buckets.items() if now - last >= full_after]:
            del self._buckets[key]


class TypingDebounce:
    """Relay a typing event only when it says something new, or after a while."""

    def __init__(
        self, seconds: float = TYPING_DEBOUNCE_SECONDS, clock: Clock = time.monotonic
    ) -> None:
        self._seconds = seconds
        self._clock = clock
        self._last: Dict[str, Tuple[str, float]] = {}

    def should_relay(self, conversation_id: str, event: str) -> bool:
        if event not in TYPING_EVENTS:
            return True
        now = self._clock()
        previous = self._last.get(conversation_id)
        if previous is not None and previous[0] == event and now - previous[1] < self._seconds:
            return False
        self._last[conversation_id] = (event, now)
        if len(self._last) > MAX_TRACKED:
            for key in [k for k, (_, at) in self._last.items() if now - at >= self._seconds]:
                del self._last[key]
        return True

    def forget(self, conversation_id: str) -> None:
        """A relay that failed must not suppress the next try."""
        self._last.pop(conversation_id, None)
