"""The retry policy of every Omnidesk call: attempts, backoff, Retry-After, one budget.

``Retrying.send`` sends one prepared request through the transport until it
gets a final answer: network errors, timeouts, 429 and 5xx are retried with
capped exponential backoff and full jitter, at most ``max_attempts`` times and
within ``retry_budget`` seconds in all; a Retry-After is honoured, and one
beyond the budget fails at once. Each attempt's timeouts are cut to the budget
left. Giving up raises ``OmnideskUnavailable``. ``rng`` and ``sleep`` are the
seams that pin the schedule in tests.

Its lines log under the client's logger, ``connectors.omnidesk.client``: one
WARNING per retried attempt and one DEBUG line per call, as before the policy
had a module of its own.
"""

import email.utils
import logging
import math
import time
from datetime import timezone
from typing import Any, Awaitable, Callable, Dict, NamedTuple, Optional, Protocol, Tuple

from connectors.omnidesk import metrics
from connectors.omnidesk.errors import OmnideskUnavailable, Redact, json_object, omnidesk_message
from connectors.omnidesk.settings import OmnideskSettings
from connectors.omnidesk.transport import (
    Request,
    Timeout,
    Transport,
    TransportError,
    TransportTimeout,
)

# The client's logger: operators filter the calls' lines by this one name.
logger = logging.getLogger("connectors.omnidesk.client")

__all__ = ["Failure", "RandomSource", "Retrying", "Sleep", "retry_after"]


class RandomSource(Protocol):
    """Where the jitter comes from; ``random.Random`` is one."""

    def uniform(self, a: float, b: float) -> float: ...


Sleep = Callable[[float], Awaitable[Any]]


class Failure(NamedTuple):
    """Why an attempt failed in a way worth retrying."""

    reason: str
    status: Optional[int] = None
    omnidesk_message: Optional[str] = None
    retry_after: Optional[float] = None


class Retrying:
    """Sends a request until a final answer, within the settings' attempts and budget."""

    def __init__(
        self,
        settings: OmnideskSettings,
        transport: Transport,
        rng: RandomSource,
        sleep: Sleep,
        redact: Redact,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._rng = rng
        self._sleep = sleep
        self._redact = redact

    async def send(
        self,
        call: str,
        method: str,
        url: str,
        headers: Dict[str, str],
        body: bytes,
        chat_session_id: Optional[str],
    ) -> Tuple[int, bytes]:
        """The status and body of the final answer (2xx, or an error status not retried)."""
        settings = self._settings
        started = time.monotonic()
        deadline = started + settings.retry_budget
        attempt = 0
        status: Optional[int] = None
        failure: Optional[Failure] = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if failure is not None and remaining <= 0:
                    raise self._give_up(call, "retry budget spent", failure, attempt)
                attempt += 1
                status = None
                timeout = Timeout(
                    total=min(settings.request_timeout, remaining),
                    connect=min(settings.connect_timeout, remaining),
                )
                request = Request(method, url, headers, body, timeout)
                sent_at = time.monotonic()
                try:
                    answer = await self._transport.handle_request(request)
                except TransportTimeout:
                    metrics.api_attempt(call, None, time.monotonic() - sent_at)
                    failure = Failure(f"no answer within {timeout.total:.3g} s")
                except TransportError as error:
                    metrics.api_attempt(call, None, time.monotonic() - sent_at)
                    failure = Failure(self._redact(str(error)))
                else:
                    status = answer.status
                    metrics.api_attempt(call, status, time.monotonic() - sent_at)
                    if status != 429 and status < 500:
                        return status, answer.body
                    failure = Failure(
                        f"HTTP {status}",
                        status,
                        omnidesk_message(json_object(answer.body), self._redact),
                        retry_after(answer.header("Retry-After")),
                    )
                delay = self._delay_before_retry(call, attempt, failure, deadline)
                metrics.api_retry(call)
                logger.warning(
                    "Omnidesk %s attempt %d of %d failed (%s%s); retrying in %.2f s "
                    "[chat_session_id=%s]",
                    call,
                    attempt,
                    settings.max_attempts,
                    failure.reason,
                    f": {failure.omnidesk_message}" if failure.omnidesk_message else "",
                    delay,
                    chat_session_id,
                )
                await self._sleep(delay)
        finally:
            logger.debug(
                "Omnidesk %s: status=%s attempt=%d elapsed=%.3fs chat_session_id=%s",
                call,
                status,
                attempt,
                time.monotonic() - started,
                chat_session_id,
            )

    def _give_up(self, call: str, why: str, failure: Failure, attempts: int) -> OmnideskUnavailable:
        detail = f"; last: {failure.reason}"
        if failure.omnidesk_message:
            detail += f" ({failure.omnidesk_message})"
        return OmnideskUnavailable(
            call,
            f"{why} after {attempts} attempt{'s' if attempts != 1 else ''}{detail}",
            status=failure.status,
            omnidesk_message=failure.omnidesk_message,
            attempts=attempts,
        )

    def _delay_before_retry(
        self, call: str, attempt: int, failure: Failure, deadline: float
    ) -> float:
        """How long to wait before the next attempt, or raise when there will be none."""
        settings = self._settings
        if attempt >= settings.max_attempts:
            raise self._give_up(call, "Omnidesk unavailable", failure, attempt)
        # Full jitter: anywhere from 0 to the capped exponential step.
        step = min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1))
        delay = self._rng.uniform(0.0, step)
        remaining = deadline - time.monotonic()
        if failure.retry_after is not None:
            if failure.retry_after >= remaining:
                raise self._give_up(
                    call,
                    f"Omnidesk asks to retry after {failure.retry_after:g} s, beyond the retry "
                    f"budget ({settings.retry_budget:g} s, {max(remaining, 0):.2f} s left)",
                    failure,
                    attempt,
                )
            delay = max(delay, failure.retry_after)
        if delay >= remaining:
            raise self._give_up(
                call, f"retry budget of {settings.retry_budget:g} s spent", failure, attempt
            )
        return delay


def retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After in seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
