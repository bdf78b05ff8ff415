"""The cluster comes up: both replicas behind nginx, a bot turn through it, trackers in PostgreSQL."""

import time
import urllib.request

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.people import CallbackCustomer, poll
from tests.e2e.receiver import CallbackReceiver
from tests.e2e.test_journey import GREETING

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return int(answer.status)


def test_both_replicas_answer_the_hookpoint_base_through_nginx(cluster: Cluster) -> None:
    already = len(cluster.proxy.upstreams_used("/webhooks/omnidesk/"))
    for _ in range(4):
        assert get(f"{cluster.proxy_url}/webhooks/omnidesk/") == 200
    used = cluster.proxy.wait_upstreams("/webhooks/omnidesk/", since=already, count=4)
    assert sorted(set(used)) == sorted(r.upstream for r in cluster.replicas), used


def test_rasa_api_is_not_behind_nginx(cluster: Cluster) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{cluster.proxy_url}/status")
    assert refused.value.code == 404
    # The replicas themselves have it (loopback only): the tests read trackers through it.
    assert get(f"{cluster.replicas[0].url}/status") == 200


async def test_a_callback_customer_talks_to_the_bot_through_nginx_and_the_tracker_is_in_postgres(
    cluster: Cluster, callback_customer: CallbackCustomer, callback_inbox: CallbackReceiver
) -> None:
    already = len(cluster.proxy.upstreams_used("/webhooks/callback/"))
    # Two turns in a row: round-robin hands them to different replicas, so the
    # second replica reads the first one's tracker from PostgreSQL.
    await callback_customer.say("hi")
    await callback_customer.wait_for_text(GREETING)
    await callback_customer.say("hello")
    await callback_inbox.wait_for(
        callback_customer.id,
        lambda messages: len([m for m in messages if GREETING in m.get("text", "")]) >= 2,
    )
    used = cluster.proxy.wait_upstreams("/webhooks/callback/", since=already, count=2)
    assert len(set(used)) == 2, used

    def stored():
        events = cluster.postgres.events(callback_customer.id)
        said = [e["text"] for e in events if e["event"] == "user"]
        answered = [e.get("text") or "" for e in events if e["event"] == "bot"]
        return (
            events
            if said == ["hi", "hello"] and sum(GREETING in a for a in answered) == 2
            else None
        )

    events = await poll(stored, "both turns and answers in PostgreSQL", timeout=10)
    assert events[0]["event"] in {"action", "session_started"}
    # Nothing of this conversation is kept in a replica's memory only.
    assert time.time() - events[-1]["timestamp"] < 60
