"""deploy/grafana/omnidesk-dashboard.json queries only metrics the connector exports.

A renamed metric would leave a panel silently empty; this reads every query of
the dashboard and looks each metric up in the registry, under the name a
scrape shows.
"""

import json
import re
from typing import Any, Dict, List, Set

from connectors.omnidesk import metrics
from tests.e2e.stack import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "omnidesk-dashboard.json"

# A name PromQL reads as a metric: followed by a selector, a range or the end of an
# argument, and not a function, an aggregation or a label inside by (...).
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def dashboard() -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def expressions() -> List[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def exported_names() -> Set[str]:
    """Every metric name a scrape of the channel shows (a counter with _total)."""
    names: Set[str] = set()
    for family in metrics.CHANNEL_REGISTRY.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def metric_names(expr: str) -> Set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    # Label names in by (...) and inside {...}, and range durations, are no metrics.
    without_labels = re.sub(r"by \([^)]*\)|\{[^}]*\}|\[[^\]]*\]", " ", without_strings)
    names = set()
    for match in _IDENTIFIER.finditer(without_labels):
        rest = without_labels[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        names.add(match.group())
    return names


def test_every_metric_the_dashboard_queries_is_exported_under_that_name() -> None:
    exported = exported_names()
    queried = set()
    for expr in expressions():
        for name in metric_names(expr):
            if name.endswith(_HISTOGRAM_PARTS) and name.rsplit("_", 1)[0] in exported:
                name = name.rsplit("_", 1)[0]
            assert name in exported, f"{name!r} (in {expr!r}) is not a metric the connector exports"
            queried.add(name)
    # The panels the dashboard promises: handoffs, first reply, calls, deliveries, forged calls.
    assert {
        "omnidesk_handoffs_started_total",
        "omnidesk_handoffs_ended_total",
        "omnidesk_handoffs_open",
        "omnidesk_first_agent_reply_seconds",
        "omnidesk_api_calls_total",
        "omnidesk_api_call_seconds",
        "omnidesk_agent_deliveries_total",
        "omnidesk_agent_deliveries_waiting",
        "omnidesk_hookpoint_forged_total",
    } <= queried


def test_the_name_reader_finds_metrics_and_skips_functions_and_labels() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, call) (rate(x_seconds_bucket{call!~"a.b"}[5m])))'
    ) == {"x_seconds_bucket"}
    assert metric_names("max(up) / min(down)") == {"up", "down"}


def test_the_dashboard_is_importable_grafana_json() -> None:
    data = dashboard()
    assert data["title"] and data["uid"] and isinstance(data["schemaVersion"], int)
    panels = data["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    inputs = {item["name"] for item in data["__inputs"]}
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}" and "DS_PROMETHEUS" in inputs
        assert all(target["expr"].strip() for target in panel["targets"])
