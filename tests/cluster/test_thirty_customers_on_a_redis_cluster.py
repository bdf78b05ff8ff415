"""The thirty customers of test_thirty_customers.py once more, the switchboard on a Redis
Cluster (3 masters with a replica each) instead of one Redis.

The session's cluster is reused: both ``rasa run`` replicas start again with
``OMNIDESK_REDIS`` naming the Cluster's nodes (Rasa Pro's lock store block, as JSON),
the run is the same, replica A SIGKILLed at the half included, and the replicas go
back to the one Redis afterwards for the tests after this one. Rasa's own lock store
stays on the one Redis (Rasa 3.6's lock store knows no Cluster).
"""

import asyncio
import json
from typing import Iterator

import aiohttp
import pytest

from tests.cluster.cluster import Cluster
from tests.cluster.test_thirty_customers import thirty_customers
from tests.e2e.people import Desk
from tests.e2e.receiver import CallbackReceiver
from tests.redis_servers import RedisClusterServers

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def switchboard_on_a_redis_cluster(
    cluster: Cluster, redis_cluster: RedisClusterServers
) -> Iterator[RedisClusterServers]:
    block = {
        "type": "redis",
        "deployment_mode": "cluster",
        "endpoints": [str(node.address) for node in redis_cluster.nodes],
    }
    one_redis = cluster.switchboard_url
    cluster.restart_replicas(
        {"OMNIDESK_REDIS": json.dumps(block), "OMNIDESK_SWITCHBOARD_URL": None}
    )
    try:
        yield redis_cluster
    finally:
        cluster.restart_replicas({"OMNIDESK_REDIS": None, "OMNIDESK_SWITCHBOARD_URL": one_redis})


@pytest.mark.timeout(600)
async def test_thirty_customers_lose_nothing_with_the_switchboard_on_a_redis_cluster(
    switchboard_on_a_redis_cluster: RedisClusterServers,
    cluster: Cluster,
    desk: Desk,
    http: aiohttp.ClientSession,
    callback_inbox: CallbackReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for replica in cluster.replicas:
        started = replica.log.read_text(encoding="utf-8", errors="replace")
        assert "switchboard cluster via" in started, f"{replica.name} is not on the Cluster"

    await thirty_customers(
        cluster,
        desk,
        http,
        callback_inbox,
        capsys,
        "the switchboard on a Redis Cluster of 3 masters",
        "thirty-customers-redis-cluster.json",
    )

    # The switchboard is on the Cluster: the replicas' sweeper holds its lease there.
    # A replica killed while it held the lease leaves a gap until the lease lapses
    # (10 s) and the other's next sweep claims it.
    loop = asyncio.get_running_loop()
    masters = await loop.run_in_executor(None, switchboard_on_a_redis_cluster.masters)
    slot = masters[0].call("CLUSTER", "KEYSLOT", "omnidesk:sweeper")
    deadline = loop.time() + 20
    while True:
        held = [master.call("CLUSTER", "COUNTKEYSINSLOT", slot) for master in masters]
        if sum(int(count) for count in held) == 1 or loop.time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert sum(int(count) for count in held) == 1
