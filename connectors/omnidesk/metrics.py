"""The connector's Prometheus metrics: one registry per process, every instrument in it.

Both processes use it: ``rasa run`` serves ``CHANNEL_REGISTRY`` at
``GET /webhooks/omnidesk/metrics`` (``metrics_enabled``), ``rasa run actions``
serves ``ACTION_REGISTRY`` on its own port (``action_metrics_port``), the part
of the same instruments that the action server moves (its Omnidesk calls and
the escalations it starts, finds without an agent or fails). The names are the
contract docs/metrics.md lists; dashboards and the runbook use exactly these.

Labels stay bounded: each label value is folded into a known set here
(``other`` for anything else), so no chat id, conversation id or free text can
become a label. Counters are per process (Prometheus sums the replicas); the
gauges of open handoffs and waiting deliveries are read from the switchboard
when the channel is scraped (``ScrapeSources``), so every replica reports the
cluster-wide value.

A dedicated registry rather than prometheus_client's default one: nothing else
in the process (Rasa's dependencies) lands on the route, and tests read a
counter before and after with ``sample``.
"""

import asyncio
import logging
import threading
from typing import Awaitable, Callable, Dict, FrozenSet, Iterable, Iterator, Optional, Tuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from connectors.omnidesk import rules

logger = logging.getLogger(__name__)

__all__ = [
    "ACTION_REGISTRY",
    "CHANNEL_REGISTRY",
    "CONTENT_TYPE_LATEST",
    "HANDOFF_REASONS",
    "METRIC_NAMES",
    "ScrapeSources",
    "render",
    "sample",
    "serve_action_metrics",
]

OTHER = "other"

# Bounded label values. Anything else is folded into "other".
HANDOFF_REASONS: FrozenSet[str] = frozenset({"asked_for_person", "not_understood", "bot_decided"})
OUTCOMES: FrozenSet[str] = frozenset(
    {"ended_by_agent", "ended_by_customer", "timed_out", "no_agent", "failed"}
)
API_CALLS: FrozenSet[str] = frozenset(rules.API_CALL_NAMES)
HOOKPOINTS: FrozenSet[str] = frozenset(rules.HOOKPOINT_NAMES)
DELIVERY_KINDS: FrozenSet[str] = frozenset({"message", "file", "typing", "notice", "end"})
DELIVERY_RESULTS: FrozenSet[str] = frozenset({"delivered", "failed"})

CHANNEL_REGISTRY = CollectorRegistry()
ProcessCollector(registry=CHANNEL_REGISTRY)
PlatformCollector(registry=CHANNEL_REGISTRY)

# First agent replies take seconds to many minutes (a queue).
FIRST_REPLY_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
# One HTTP attempt against Omnidesk: bounded by request_timeout (10 s by default).
API_CALL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HANDOFFS_STARTED = Counter(
    "omnidesk_handoffs_started_total",
    "Escalations to a live agent begun, by why the bot escalated.",
    ["reason"],
    registry=CHANNEL_REGISTRY,
)
HANDOFFS_ENDED = Counter(
    "omnidesk_handoffs_ended_total",
    "Handoffs ended, by how: ended_by_agent, ended_by_customer, timed_out, no_agent, failed.",
    ["outcome"],
    registry=CHANNEL_REGISTRY,
)
HANDOFFS_OPEN = Gauge(
    "omnidesk_handoffs_open",
    "Conversations with an agent now, read from the switchboard at scrape time "
    "(cluster-wide with a Redis switchboard).",
    registry=CHANNEL_REGISTRY,
)
FIRST_AGENT_REPLY = Histogram(
    "omnidesk_first_agent_reply_seconds",
    "Seconds from the start of a handoff to the agent's first message or file.",
    buckets=FIRST_REPLY_BUCKETS,
    registry=CHANNEL_REGISTRY,
)
CUSTOMER_TURNS_RELAYED = Counter(
    "omnidesk_customer_turns_relayed_total",
    "Customer text turns Omnidesk accepted for the agent.",
    registry=CHANNEL_REGISTRY,
)
AGENT_DELIVERIES = Counter(
    "omnidesk_agent_deliveries_total",
    "Outbox entries handed to the customer's channel (delivered) or given up (failed).",
    ["kind", "result"],
    registry=CHANNEL_REGISTRY,
)
AGENT_DELIVERIES_WAITING = Gauge(
    "omnidesk_agent_deliveries_waiting",
    "Outbox entries not yet delivered, read at scrape time (cluster-wide with Redis).",
    registry=CHANNEL_REGISTRY,
)
API_CALLS_TOTAL = Counter(
    "omnidesk_api_calls_total",
    "HTTP attempts against Omnidesk, by call and status (the HTTP status, or error).",
    ["call", "status"],
    registry=CHANNEL_REGISTRY,
)
API_CALL_SECONDS = Histogram(
    "omnidesk_api_call_seconds",
    "Seconds one HTTP attempt against Omnidesk took, by call.",
    ["call"],
    buckets=API_CALL_BUCKETS,
    registry=CHANNEL_REGISTRY,
)
API_RETRIES = Counter(
    "omnidesk_api_retries_total",
    "Omnidesk attempts retried after a network error, a timeout, 429 or 5xx, by call.",
    ["call"],
    registry=CHANNEL_REGISTRY,
)
HOOKPOINT_ANSWERS = Counter(
    "omnidesk_hookpoint_answers_total",
    "Answers to Omnidesk's hookpoint calls, by hookpoint and HTTP status.",
    ["hookpoint", "status"],
    registry=CHANNEL_REGISTRY,
)
HOOKPOINT_FORGED = Counter(
    "omnidesk_hookpoint_forged_total",
    "Hookpoint calls refused (404) because their token was malformed or not their chat's.",
    ["hookpoint"],
    registry=CHANNEL_REGISTRY,
)
SWITCHBOARD_ERRORS = Counter(
    "omnidesk_switchboard_errors_total",
    "Switchboard (Redis) operations that raised, by operation.",
    ["operation"],
    registry=CHANNEL_REGISTRY,
)
SWITCHBOARD_UP = Gauge(
    "omnidesk_switchboard_up",
    "1 when the switchboard answered the last health check, else 0.",
    registry=CHANNEL_REGISTRY,
)
API_REACHABLE = Gauge(
    "omnidesk_api_reachable",
    "1 when Omnidesk answered lately, else 0.",
    registry=CHANNEL_REGISTRY,
)

# Every name of the contract, as a scrape shows it (a histogram adds _bucket,
# _sum and _count to its name, a counter is its name with _total).
METRIC_NAMES: FrozenSet[str] = frozenset(
    {
        "omnidesk_handoffs_started_total",
        "omnidesk_handoffs_ended_total",
        "omnidesk_handoffs_open",
        "omnidesk_first_agent_reply_seconds",
        "omnidesk_customer_turns_relayed_total",
        "omnidesk_agent_deliveries_total",
        "omnidesk_agent_deliveries_waiting",
        "omnidesk_api_calls_total",
        "omnidesk_api_call_seconds",
        "omnidesk_api_retries_total",
        "omnidesk_hookpoint_answers_total",
        "omnidesk_hookpoint_forged_total",
        "omnidesk_switchboard_errors_total",
        "omnidesk_switchboard_up",
        "omnidesk_api_reachable",
    }
)

# What the action server moves; the rest would read 0 there and mislead
# (switchboard_up 0 in a process that has no switchboard).
_ACTION_FAMILIES: FrozenSet[str] = frozenset(
    {
        "omnidesk_handoffs_started",
        "omnidesk_handoffs_ended",
        "omnidesk_api_calls",
        "omnidesk_api_call_seconds",
        "omnidesk_api_retries",
        "python_info",
    }
)


class _OnlyFamilies(Collector):
    """A collector that passes on some families of another registry."""

    def __init__(self, source: CollectorRegistry, families: Iterable[str]) -> None:
        self._source = source
        self._families = frozenset(families)

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if family.name in self._families or family.name.startswith("process_"):
                yield family


ACTION_REGISTRY = CollectorRegistry(auto_describe=False)
ACTION_REGISTRY.register(_OnlyFamilies(CHANNEL_REGISTRY, _ACTION_FAMILIES))


def fold(value: Optional[str], known: FrozenSet[str]) -> str:
    """``value`` when it is one of ``known``, else ``other``: a label stays bounded."""
    return value if value is not None and value in known else OTHER


def status_label(status: Optional[int]) -> str:
    """An HTTP status as a label ("200", "503"), or "error" when there was no answer."""
    if status is None or not 100 <= status <= 599:
        return "error"
    return str(status)


# -- what call sites move ----------------------------------------------------------


def handoff_started(reason: Optional[str]) -> None:
    HANDOFFS_STARTED.labels(reason=fold(reason, HANDOFF_REASONS)).inc()


def handoff_ended(outcome: str) -> None:
    HANDOFFS_ENDED.labels(outcome=fold(outcome, OUTCOMES)).inc()


def first_agent_reply(seconds: float) -> None:
    FIRST_AGENT_REPLY.observe(max(0.0, seconds))


def customer_turn_relayed() -> None:
    CUSTOMER_TURNS_RELAYED.inc()


def agent_delivery(kind: str, delivered: bool) -> None:
    AGENT_DELIVERIES.labels(
        kind=fold(kind, DELIVERY_KINDS), result="delivered" if delivered else "failed"
    ).inc()


def api_attempt(call: str, status: Optional[int], seconds: float) -> None:
    label = fold(call, API_CALLS)
    API_CALLS_TOTAL.labels(call=label, status=status_label(status)).inc()
    API_CALL_SECONDS.labels(call=label).observe(max(0.0, seconds))


def api_retry(call: str) -> None:
    API_RETRIES.labels(call=fold(call, API_CALLS)).inc()


def hookpoint_answer(hookpoint: str, status: int, forged: bool = False) -> None:
    name = fold(hookpoint, HOOKPOINTS)
    HOOKPOINT_ANSWERS.labels(hookpoint=name, status=status_label(status)).inc()
    if forged:
        HOOKPOINT_FORGED.labels(hookpoint=name).inc()


def switchboard_error(operation: str) -> None:
    """``operation`` is a method name of the switchboard or outbox store: a bounded set."""
    SWITCHBOARD_ERRORS.labels(operation=operation).inc()


def set_health(switchboard_ok: Optional[bool], omnidesk_ok: Optional[bool]) -> None:
    """The two health gauges; None (not checked yet) leaves a gauge as it was."""
    if switchboard_ok is not None:
        SWITCHBOARD_UP.set(1 if switchboard_ok else 0)
    if omnidesk_ok is not None:
        API_REACHABLE.set(1 if omnidesk_ok else 0)


# -- scraping ----------------------------------------------------------------------

Count = Callable[[], Awaitable[int]]

# A scrape must not hang on an unreachable Redis: Prometheus' own timeout is 10 s.
SCRAPE_COUNT_TIMEOUT = 2.0


class ScrapeSources:
    """The gauges read from shared state when the channel is scraped.

    ``open_handoffs`` and ``waiting_deliveries`` count in the switchboard and
    the outbox store; with Redis every replica counts the same keys, so each
    reports the cluster-wide number (dashboards take ``max()``, not ``sum()``).
    A count that fails leaves its gauge at its last value; the switchboard
    error is counted where Redis raised it, a count that hangs past
    ``SCRAPE_COUNT_TIMEOUT`` here.
    """

    def __init__(self, open_handoffs: Count, waiting_deliveries: Count) -> None:
        self.open_handoffs = open_handoffs
        self.waiting_deliveries = waiting_deliveries

    async def refresh(self) -> None:
        for gauge, name, count, operation in (
            (HANDOFFS_OPEN, "omnidesk_handoffs_open", self.open_handoffs, "count_open"),
            (
                AGENT_DELIVERIES_WAITING,
                "omnidesk_agent_deliveries_waiting",
                self.waiting_deliveries,
                "count_waiting",
            ),
        ):
            try:
                gauge.set(await asyncio.wait_for(count(), SCRAPE_COUNT_TIMEOUT))
            except Exception as error:
                if isinstance(error, asyncio.TimeoutError):
                    # A Redis error is counted where it was raised; a hang is counted here.
                    switchboard_error(operation)
                logger.warning(
                    "Metrics: %s could not be read at scrape time; it keeps its last value: %s: %s",
                    name,
                    type(error).__name__,
                    error,
                )


def render(registry: CollectorRegistry = CHANNEL_REGISTRY) -> Tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def sample(name: str, labels: Optional[Dict[str, str]] = None) -> float:
    """One sample's value in the channel's registry, 0 when it has none yet (tests diff it)."""
    value = CHANNEL_REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


_served_on: Optional[int] = None
_serving = threading.Lock()


def serve_action_metrics(port: Optional[int], host: str = "0.0.0.0") -> bool:  # noqa: S104
    """Serve ``ACTION_REGISTRY`` on ``port`` from a thread, once per process.

    rasa_sdk builds its own Sanic app and offers no hook for another route, so
    the action server's metrics get prometheus_client's own small HTTP server.
    False when ``port`` is None (off) or it was started already.
    """
    global _served_on
    if port is None:
        return False
    with _serving:
        if _served_on is not None:
            if _served_on != port:
                logger.warning(
                    "Action server metrics already served on port %d; %d ignored.",
                    _served_on,
                    port,
                )
            return False
        start_http_server(port, addr=host, registry=ACTION_REGISTRY)
        _served_on = port
    logger.info("Action server metrics served at http://%s:%d/metrics.", host, port)
    return True
