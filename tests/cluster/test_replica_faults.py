"""A replica killed with SIGKILL: nginx sends everything to the other one; it comes back."""

import signal
import time
import urllib.request

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.people import CallbackCustomer
from tests.e2e.stack import StackError
from tests.e2e.test_journey import GREETING

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(answer.status)


async def test_a_killed_replica_is_routed_around_and_restarts(
    cluster: Cluster, callback_customer: CallbackCustomer
) -> None:
    killed, alive = cluster.replica("rasa-a"), cluster.replica("rasa-b")
    cluster.kill_replica("rasa-a", signal.SIGKILL)
    try:
        assert not killed.process.alive
        with pytest.raises(StackError, match="rasa-a"):
            cluster.check_alive()
        before = len(cluster.proxy.upstreams_used("/webhooks/"))
        # Every request still gets its answer: a refused connection is tried on the other.
        for _ in range(4):
            assert get(f"{cluster.proxy_url}/webhooks/omnidesk/") == 200
        await callback_customer.say("hi")
        await callback_customer.wait_for_text(GREETING)
        answered = cluster.proxy.wait_upstreams("/webhooks/", since=before, count=5)
        assert answered == [alive.upstream] * 5
    finally:
        cluster.restart_replica("rasa-a")
    cluster.check_alive()
    assert get(f"{killed.url}/webhooks/omnidesk/") == 200
    # The restarted replica gets its share again (nginx retries it after fail_timeout).
    before = len(cluster.proxy.upstreams_used("/webhooks/omnidesk/"))
    seen = set()
    for _ in range(40):
        get(f"{cluster.proxy_url}/webhooks/omnidesk/")
        seen = set(cluster.proxy.wait_upstreams("/webhooks/omnidesk/", since=before, count=1))
        if killed.upstream in seen:
            break
        time.sleep(0.25)
    assert killed.upstream in seen
