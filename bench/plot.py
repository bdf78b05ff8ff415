"""latest.png: latency against conversation length and against concurrency.

The right panel has the floor, the relayed turn with the in-memory switchboard
and with the Redis one (p50, p99, turns per second), and the agent reply through
each outbox at one client.
"""

import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
with warnings.catch_warnings():
    # matplotlib 3.5 calls pyparsing's old names: nothing a reader of the results needs.
    warnings.simplefilter("ignore")
    import matplotlib.pyplot as plt


def _series(figures: Dict[str, Any], prefix: str) -> List[Dict[str, Any]]:
    found = [
        value
        for key, value in figures.items()
        if key.startswith(prefix) and key[len(prefix) :].isdigit()
    ]
    return sorted(found, key=lambda f: f["concurrency"])


def _ms(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def plot(results: Dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _plot(results, path)


def _plot(results: Dict[str, Any], path: Path) -> None:
    figures = results["figures"]
    machine = results["machine"]
    fig, (by_length, by_concurrency) = plt.subplots(1, 2, figsize=(12, 4.8))

    history = figures["relay_by_history"]
    events = [h["tracker_events"] for h in history]
    by_length.plot(events, [_ms(h["p50_ms"]) for h in history], "o-", label="relayed turn p50")
    by_length.plot(events, [_ms(h["p99_ms"]) for h in history], "s--", label="relayed turn p99")
    by_length.plot(
        events,
        [_ms(h.get("max_ms")) for h in history],
        "^:",
        label="relayed turn max (a background tracker write)",
    )
    bot = figures["bot_turn_wrapped"]
    by_length.axhline(_ms(bot["p50_ms"]), color="grey", linestyle=":", label="bot turn p50")
    by_length.set_xscale("log")
    by_length.set_yscale("log")
    by_length.set_xlabel("tracker events in the conversation")
    by_length.set_ylabel("latency (ms)")
    by_length.set_title("Relayed customer turn vs conversation length")
    by_length.grid(True, which="both", alpha=0.3)
    by_length.legend()

    for prefix, label, colour, offset in (
        ("floor_c", "floor", "tab:grey", -12),
        ("relay_c", "relayed", "tab:blue", 6),
        ("relay_redis_c", "relayed, Redis", "tab:red", 16),
    ):
        series = _series(figures, prefix)
        levels = [s["concurrency"] for s in series]
        by_concurrency.plot(
            levels, [_ms(s["p50_ms"]) for s in series], "o-", color=colour, label=f"{label} p50"
        )
        by_concurrency.plot(
            levels, [_ms(s["p99_ms"]) for s in series], "s--", color=colour, label=f"{label} p99"
        )
        for s in series:
            by_concurrency.annotate(
                f"{s['throughput']:.0f}/s",
                (s["concurrency"], _ms(s["p50_ms"])),
                textcoords="offset points",
                xytext=(4, offset),
                fontsize=8,
                color=colour,
            )
    for key, label, marker in (
        ("agent_reply", "agent reply p50, memory outbox", "D"),
        ("agent_reply_redis", "agent reply p50, Redis outbox", "v"),
    ):
        if key in figures:
            by_concurrency.plot(
                [1],
                [_ms(figures[key]["p50_ms"])],
                marker,
                color="tab:green",
                markersize=8,
                zorder=5,
                label=label,
            )
    by_concurrency.margins(x=0.1, y=0.2)
    by_concurrency.set_xscale("log")
    by_concurrency.set_yscale("log")
    by_concurrency.set_xlabel("concurrent clients (relayed: concurrent handoffs)")
    by_concurrency.set_ylabel("latency (ms)")
    by_concurrency.set_title("Latency vs concurrency (labels: turns per second)")
    by_concurrency.grid(True, which="both", alpha=0.3)
    by_concurrency.legend(fontsize=8)

    fig.suptitle(
        f"rasa-omnidesk, {results['mode']} run: {machine['cpu_model']}, {machine['cores']} cores, "
        f"Python {machine['python']}, {machine['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
