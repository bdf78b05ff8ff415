"""Whether this instance can take turns: the liveness and readiness probes' answers.

- ``HealthState``: what is known now. ``switchboard_ok`` (the switchboard's
  Redis answered the last check) and ``omnidesk_ok`` (Omnidesk answered the
  last real call), each None while not known yet, with when and why.
- ``SwitchboardCheck``: a PING on a connection of its own (redis_connection's
  ``RedisPing``: the server, the master the sentinels name, or every master of
  a Cluster), bounded by ``readiness_timeout`` whether Redis refuses
  connections (stopped) or takes them and never answers (hung), its answer kept
  ``readiness_cache`` seconds so a burst of probes costs Redis one PING.
  ``memory://`` is always ok.
- ``WatchedTransport``: the client's transport, wrapped; every attempt's
  outcome is written to the state. A probe never calls Omnidesk.
- ``OmnideskWatch``: one ``requestChatConfig`` (read only) when no call has
  been made for ``api_check_interval`` seconds, so a quiet instance still
  knows.
- ``Health``: the above for one channel, started and stopped with it; the
  routes (routes.py) ask it ``liveness()`` and ``readiness()``.

Readiness is 503 only while the channel has not started or the switchboard
does not answer: without it no turn can be routed. Omnidesk failing leaves it
200 with ``"status": "degraded"``: Omnidesk is the same for every replica, and
the bot still answers. docs/architecture.md ("Health") says why. The bodies name
no host, URL, token or error text: the routes are reachable from outside.
"""

import asyncio
import dataclasses
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from connectors.omnidesk import tasks
from connectors.omnidesk.client import REQUEST_CHAT_CONFIG, OmnideskClient, OmnideskError
from connectors.omnidesk.redis_connection import (
    RedisConnection,
    RedisPing,
    RedisUnavailable,
    describe_failure,
)
from connectors.omnidesk.settings import OmnideskSettings
from connectors.omnidesk.transport import (
    AiohttpTransport,
    Request,
    Response,
    Transport,
    TransportError,
    TransportTimeout,
)

logger = logging.getLogger(__name__)

__all__ = ["Health", "HealthState", "OmnideskWatch", "SwitchboardCheck", "WatchedTransport"]

Clock = Callable[[], float]
Ping = Callable[[], Awaitable[Any]]

# Omnidesk answered, but refuses us: the connector cannot work, as if it were down.
_REFUSING_STATUSES = frozenset({401, 403, 429})
# Seconds between the switchboard checks made with no probe asking.
SWITCHBOARD_CHECK_EVERY = 5.0


def _iso(when: Optional[float]) -> Optional[str]:
    if when is None:
        return None
    moment = datetime.fromtimestamp(when, tz=timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class HealthState:
    """What the probes report. Times are wall-clock seconds (``time.time``)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self.started = False
        self.switchboard_kind = "memory"
        self.switchboard_ok: Optional[bool] = None
        self.switchboard_reason: Optional[str] = None
        self.switchboard_checked_at: Optional[float] = None
        self.omnidesk_ok: Optional[bool] = None
        self.omnidesk_reason: Optional[str] = None
        self.omnidesk_call: Optional[str] = None
        self.omnidesk_last_ok_at: Optional[float] = None
        self.omnidesk_last_failure_at: Optional[float] = None
        self.omnidesk_failures_in_a_row = 0

    def now(self) -> float:
        return self._clock()

    # -- what the checks and the calls tell it ------------------------------------

    def switchboard_checked(self, reason: Optional[str]) -> None:
        """The outcome of a switchboard check: None when it answered, else why not."""
        ok = reason is None
        if ok and self.switchboard_ok is False:
            logger.info("Switchboard (%s) answers again: ready.", self.switchboard_kind)
        elif not ok and self.switchboard_ok is not False:
            # WARNING: the calls that fail log the outage as an ERROR once already.
            logger.warning(
                "Switchboard (%s) does not answer (%s): readiness is 503.",
                self.switchboard_kind,
                reason,
            )
        self.switchboard_ok = ok
        self.switchboard_reason = reason
        self.switchboard_checked_at = self._clock()

    def omnidesk_answered(self, call: str) -> None:
        if self.omnidesk_ok is False:
            logger.info("Omnidesk answers again (%s).", call)
        self.omnidesk_ok = True
        self.omnidesk_reason = None
        self.omnidesk_call = call
        self.omnidesk_last_ok_at = self._clock()
        self.omnidesk_failures_in_a_row = 0

    def omnidesk_failed(self, call: str, reason: str) -> None:
        if self.omnidesk_ok is not False:
            logger.warning("Omnidesk %s failed (%s): readiness reports degraded.", call, reason)
        self.omnidesk_ok = False
        self.omnidesk_reason = reason
        self.omnidesk_call = call
        self.omnidesk_last_failure_at = self._clock()
        self.omnidesk_failures_in_a_row += 1

    def omnidesk_quiet_for(self, since: float) -> float:
        """Seconds since the last Omnidesk outcome, or since ``since`` when there was none."""
        last = max(self.omnidesk_last_ok_at or since, self.omnidesk_last_failure_at or since, since)
        return self._clock() - last

    # -- what the probes answer -----------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.started and self.switchboard_ok is True

    def report(self) -> Dict[str, Any]:
        """The readiness body: status ``starting``, ``unavailable``, ``degraded`` or ``ready``."""
        if not self.started:
            status = "starting"
        elif not self.ready:
            status = "unavailable"
        elif self.omnidesk_ok is False:
            status = "degraded"
        else:
            status = "ready"
        switchboard: Dict[str, Any] = {
            "status": {True: "ok", False: "error", None: "unknown"}[self.switchboard_ok],
            "kind": self.switchboard_kind,
            "checked_at": _iso(self.switchboard_checked_at),
        }
        if self.switchboard_reason is not None:
            switchboard["reason"] = self.switchboard_reason
        omnidesk: Dict[str, Any] = {
            "status": {True: "ok", False: "failing", None: "unknown"}[self.omnidesk_ok],
            "last_call": self.omnidesk_call,
            "last_ok_at": _iso(self.omnidesk_last_ok_at),
            "last_failure_at": _iso(self.omnidesk_last_failure_at),
        }
        if self.omnidesk_ok is False:
            omnidesk["reason"] = self.omnidesk_reason
            omnidesk["failures_in_a_row"] = self.omnidesk_failures_in_a_row
        return {"status": status, "switchboard": switchboard, "omnidesk": omnidesk}


def _redis_ping(
    connection: RedisConnection, timeout: float
) -> Tuple[Ping, Callable[[], Awaitable[None]]]:
    """A PING on a client of its own (not the switchboard's pool), one try, in any mode,
    and how to close it."""
    ping = RedisPing(connection, timeout)
    return ping, ping.close


class SwitchboardCheck:
    """Whether the switchboard answers, asked at most once per ``cache`` seconds."""

    def __init__(
        self,
        state: HealthState,
        ping: Optional[Ping],
        timeout: float,
        cache: float,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self._state = state
        self._ping = ping
        self._timeout = timeout
        self._cache = cache
        self._monotonic = monotonic
        self._checked_at: Optional[float] = None
        self._running: Optional[asyncio.Future[None]] = None

    async def check(self) -> None:
        """Bring ``state.switchboard_ok`` up to date; returns within about ``timeout`` seconds."""
        if self._ping is None:
            self._state.switchboard_checked(None)
            return
        now = self._monotonic()
        if self._checked_at is not None and now - self._checked_at < self._cache:
            return
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._ping_once())
        # Shielded: a probe that gives up does not cancel the PING others wait for.
        await asyncio.shield(self._running)

    async def _ping_once(self) -> None:
        assert self._ping is not None
        reason: Optional[str] = None
        try:
            await asyncio.wait_for(self._ping(), self._timeout)
        except asyncio.TimeoutError:
            reason = f"no answer within {self._timeout:g} s"
        except RedisUnavailable as error:
            reason = error.reason
        except Exception as error:  # every failure is a reason; none is swallowed
            reason = describe_failure(error, self._timeout)
        self._checked_at = self._monotonic()
        self._state.switchboard_checked(reason)


class WatchedTransport:
    """The client's transport; every attempt's outcome goes to the health state."""

    def __init__(self, inner: Transport, state: HealthState) -> None:
        self._inner = inner
        self._state = state

    async def handle_request(self, request: Request) -> Response:
        # The call's name is the path's last segment; the query (tokens) is never read.
        call = request.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "?"
        try:
            answer = await self._inner.handle_request(request)
        except TransportTimeout:
            self._state.omnidesk_failed(call, "no answer (timeout)")
            raise
        except TransportError:
            self._state.omnidesk_failed(call, "no answer (connection failed)")
            raise
        if answer.status >= 500 or answer.status in _REFUSING_STATUSES:
            self._state.omnidesk_failed(call, f"HTTP {answer.status}")
        else:
            self._state.omnidesk_answered(call)
        return answer

    async def close(self) -> None:
        await self._inner.close()


class OmnideskWatch:
    """Asks Omnidesk once (requestChatConfig) after ``interval`` seconds without a call."""

    def __init__(self, state: HealthState, client: OmnideskClient, interval: float) -> None:
        self._state = state
        self._client = client
        self._interval = interval

    async def run(self) -> None:
        since = self._state.now()
        while True:
            quiet = self._state.omnidesk_quiet_for(since)
            if quiet < self._interval:
                await asyncio.sleep(self._interval - quiet)
                continue
            since = self._state.now()
            try:
                await self._client.request_chat_config()
            except OmnideskError as error:
                # The transport has recorded the failure; this says which call it was.
                logger.debug("Omnidesk check (%s) failed: %s", REQUEST_CHAT_CONFIG, error)


class Health:
    """The probes of one channel: built with it, started and stopped with it."""

    def __init__(self, settings: OmnideskSettings, state: Optional[HealthState] = None) -> None:
        self.settings = settings
        self.state = state if state is not None else HealthState()
        self._stopped = False
        self._switchboard: Optional[SwitchboardCheck] = None
        self._close_ping: Optional[Callable[[], Awaitable[None]]] = None
        self._watch_client: Optional[OmnideskClient] = None
        self._tasks: List[asyncio.Task[None]] = []

    def transport(self, inner: Optional[Transport] = None) -> WatchedTransport:
        """A transport for the channel's client whose outcomes the readiness body shows."""
        return WatchedTransport(inner if inner is not None else AiohttpTransport(), self.state)

    def start(self) -> None:
        settings = self.settings
        ping: Optional[Ping] = None
        connection = settings.redis_connection
        if connection is not None:
            self.state.switchboard_kind = "redis"
            ping, self._close_ping = _redis_ping(connection, settings.readiness_timeout)
        self._switchboard = SwitchboardCheck(
            self.state, ping, settings.readiness_timeout, settings.readiness_cache
        )
        self._tasks.append(asyncio.ensure_future(self._keep_checking(self._switchboard)))
        if settings.api_check_interval > 0:
            # One attempt: the next check is the retry.
            once = dataclasses.replace(settings, max_attempts=1)
            self._watch_client = OmnideskClient(once, transport=self.transport())
            watch = OmnideskWatch(self.state, self._watch_client, settings.api_check_interval)
            self._tasks.append(asyncio.ensure_future(watch.run()))
        self._stopped = False
        self.state.started = True

    async def _keep_checking(self, check: SwitchboardCheck) -> None:
        """The switchboard's state stays current (for the gauge, the log) with no probe asking."""
        while True:
            await check.check()
            await asyncio.sleep(SWITCHBOARD_CHECK_EVERY)

    async def stop(self) -> None:
        self.state.started = False
        self._stopped = True
        await tasks.stop_all(self._tasks)
        self._tasks = []
        if self._watch_client is not None:
            await self._watch_client.close()
            self._watch_client = None
        if self._close_ping is not None:
            await self._close_ping()
            self._close_ping = None
        self._switchboard = None

    def _not_started(self) -> Dict[str, Any]:
        return {"status": "stopping" if self._stopped else "starting"}

    def liveness(self) -> Tuple[int, Dict[str, Any]]:
        """200 while the channel is started: the loop that answers this is the check."""
        if not self.state.started:
            return 503, self._not_started()
        return 200, {"status": "alive"}

    async def readiness(self) -> Tuple[int, Dict[str, Any]]:
        """200 when a turn can be routed (Omnidesk failing is ``degraded``, still 200), else 503."""
        if not self.state.started or self._switchboard is None:
            return 503, self._not_started()
        await self._switchboard.check()
        return (200 if self.state.ready else 503), self.state.report()
