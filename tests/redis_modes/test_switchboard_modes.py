"""The switchboard and the outbox store on every Redis a team runs: one server, a Sentinel
group, a Cluster (keys spread over its masters), and TLS with an ACL user.

Each script, pipeline and pub/sub channel the connector uses runs here on the real
deployment, through one ``RedisClients`` per instance as the channel makes them. The
prefix has no hash tag, so on the Cluster the per-tag indexes and the conversations
land on every master.
"""

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator, List, Tuple

import pytest

from connectors.omnidesk.channel.outbox_store import RedisOutboxStore
from connectors.omnidesk.channel.redis_clients import RedisClients
from connectors.omnidesk.channel.redis_switchboard import RedisKeys, RedisSwitchboard
from connectors.omnidesk.channel.switchboard import Handoff, SwitchboardError
from connectors.omnidesk.handoff import TAGS, new_chat_session_id
from connectors.omnidesk.redis_connection import (
    RedisConnection,
    close_client,
    create_pubsub_client,
)
from connectors.omnidesk.tasks import stop
from tests.redis_modes.test_cluster import key_slot, restart_node
from tests.redis_servers import (
    PlainRedis,
    RedisClusterServers,
    SentinelGroup,
    TlsRedis,
)

pytestmark = pytest.mark.redis

MODES = ["standard", "sentinel", "cluster", "tls", "narrow-acl"]

# The rules docs/deployment.md ("TLS and an ACL user") gives a user of its own, on
# the connector's keys and channels only.
NARROW_ACL = ["+@read", "+@write", "+@keyspace", "+@scripting", "+@pubsub", "+@connection", "+time"]


@pytest.fixture(params=MODES)
def connection(request: pytest.FixtureRequest, prefix: str) -> RedisConnection:
    mode = request.param
    if mode == "standard":
        plain: PlainRedis = request.getfixturevalue("plain_redis")
        return plain.connection()
    if mode == "narrow-acl":
        plain = request.getfixturevalue("plain_redis")
        user = f"connector-{prefix.strip(':')}"
        plain.node.call(
            "ACL", "SETUSER", user, "on", ">narrow-pw", f"~{prefix}*", f"&{prefix}*", *NARROW_ACL
        )
        return plain.connection(username=user, password="narrow-pw")
    if mode == "sentinel":
        group: SentinelGroup = request.getfixturevalue("sentinel_group")
        return group.connection()
    if mode == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        return cluster.connection()
    tls: TlsRedis = request.getfixturevalue("tls_redis")
    return tls.connection()


@pytest.fixture
def prefix() -> str:
    """This test's keys: no hash tag, so a Cluster spreads them over its masters."""
    return f"t{uuid.uuid4().hex[:10]}:"


@asynccontextmanager
async def instance(
    connection: RedisConnection, prefix: str, **waits: float
) -> AsyncIterator[Tuple[RedisSwitchboard, RedisOutboxStore]]:
    """What one Rasa instance has: one set of clients, a switchboard and its outbox on them."""
    clients = RedisClients(connection)
    board = RedisSwitchboard(
        clients,
        prefix=prefix,
        line_lease=30,
        outbox_retention=60,
        **waits,  # type: ignore[arg-type]
    )
    try:
        yield board, board.outbox_store
    finally:
        await board.close()
        await clients.close()


def handoff(conversation_id: str) -> Handoff:
    now = time.time()
    return Handoff(
        conversation_id=conversation_id,
        chat_session_id=new_chat_session_id(conversation_id),
        next_message_number=2,
        started_at=now,
        last_activity=now,
        channel="callback",
    )


async def test_a_handoff_lives_its_whole_life(connection: RedisConnection, prefix: str) -> None:
    conversations = [f"conv-{index}" for index in range(24)]
    async with instance(connection, prefix) as (board, _):
        for conversation_id in conversations:
            assert await board.start(handoff(conversation_id)) is None

        assert sorted(h.conversation_id for h in await board.all()) == sorted(conversations)
        assert await board.count_open() == len(conversations)

        numbers: List[int] = []
        for turn in range(3):
            async with board.in_line("conv-3", True, 5.0) as place:
                assert place.first and place.handoff is not None
                assert place.message_number is not None
                numbers.append(place.message_number)
                place.kept.append(f'{{"turn": {turn}}}')
        assert numbers == [2, 3, 4]
        assert await board.records.due(None) == ["conv-3"]
        assert len(await board.records.peek("conv-3")) == 3
        token = await board.records.lock("conv-3")
        assert token is not None
        await board.records.drop("conv-3", 3)
        await board.records.unlock("conv-3", token)
        assert await board.records.due(None) == []

        started = await board.get("conv-5")
        assert started is not None
        assert await board.find_by_chat_session(started.chat_session_id) == started
        await board.touch("conv-5", agent=True, agent_name="Anna")
        assert await board.claim_wait_notice("conv-5")
        assert not await board.claim_wait_notice("conv-5")
        ended = await board.end("conv-5", tell_omnidesk="ended_by_customer")
        assert ended is not None and await board.get("conv-5") is None
        await board.told_omnidesk("conv-5", started.chat_session_id)
        assert await board.find_by_chat_session(started.chat_session_id) is None
        assert await board.count_open() == len(conversations) - 1

        assert await board.claim_sweeper("one", 5)
        assert not await board.claim_sweeper("two", 5)
        await board.release_sweeper("one")
        assert await board.claim_sweeper("two", 5)


async def test_messages_for_customers_wait_in_order_and_leave_once(
    connection: RedisConnection, prefix: str
) -> None:
    conversations = [f"cust-{index}" for index in range(12)]
    async with instance(connection, prefix) as (_, outbox):
        for number in range(3):
            for conversation_id in conversations:
                await outbox.put(conversation_id, {"text": f"{conversation_id} #{number}"})

        assert await outbox.waiting() == sorted(conversations)
        assert await outbox.count_waiting() == 3 * len(conversations)
        for conversation_id in conversations:
            head = await outbox.take(conversation_id, "me", 5)
            assert head
            assert await outbox.take(conversation_id, "someone else", 5) is None
            assert await outbox.remove(conversation_id, head[0][0], "someone else", 5) is None
            left: List[str] = []
            while head:
                entry_id, fields = head[0]
                left.append(fields["text"])
                head = await outbox.remove(conversation_id, entry_id, "me", 5)
            assert head == []
            assert left == [f"{conversation_id} #{n}" for n in range(3)]
        assert await outbox.waiting() == []
        assert await outbox.count_waiting() == 0

        await outbox.mark_present_many([(c, f"socket-{c}") for c in conversations], 5)
        assert all([await outbox.present(c) for c in conversations])
        await outbox.mark_gone("cust-1", "socket-cust-1")
        assert not await outbox.present("cust-1")


async def test_another_instance_hears_a_put_and_a_place_given_up(
    connection: RedisConnection, prefix: str
) -> None:
    async with instance(connection, prefix) as (first, first_outbox), instance(
        connection, prefix
    ) as (second, second_outbox):
        nudged: asyncio.Queue[str] = asyncio.Queue()
        listening = asyncio.ensure_future(second_outbox.listen(nudged.put_nowait))
        try:
            await asyncio.wait_for(second.clients.subscriber.connected.wait(), 10)
            await first_outbox.put("cust-9", {"text": "hello"})
            assert await asyncio.wait_for(nudged.get(), 5) == "cust-9"

            await first.start(handoff("conv-line"))
            held = asyncio.Event()
            release = asyncio.Event()

            async def hold() -> None:
                async with first.in_line("conv-line", True, 5.0):
                    held.set()
                    await release.wait()

            holder = asyncio.ensure_future(hold())
            await held.wait()
            began = time.monotonic()
            waiter = asyncio.ensure_future(_served_number(second, "conv-line"))
            await asyncio.sleep(0.3)
            release.set()
            number = await asyncio.wait_for(waiter, 10)
            await holder
            # Woken over pub/sub, not by the look every third of the 30 s lease.
            assert number == 3 and time.monotonic() - began < 5
        finally:
            await stop(listening)


async def _served_number(board: RedisSwitchboard, conversation_id: str) -> int:
    async with board.in_line(conversation_id, True, 20.0) as place:
        assert place.first and place.message_number is not None
        return place.message_number


def test_the_per_tag_indexes_are_spread_over_every_master(
    redis_cluster: RedisClusterServers,
) -> None:
    masters = redis_cluster.masters()
    slots = [key_slot(masters[0], key) for key in RedisKeys().every_tag("open")]
    owners = {_owner(redis_cluster, slot) for slot in slots}

    assert len(slots) == TAGS and len(set(slots)) == TAGS
    assert owners == {master.port for master in masters}


def _owner(cluster: RedisClusterServers, slot: int) -> int:
    for start, end, master, *_ in cluster.masters()[0].call("CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return int(master[1])
    raise AssertionError(f"no master serves slot {slot}")


async def test_a_put_no_replica_confirms_is_taken_back_and_fails(
    plain_redis: PlainRedis, prefix: str
) -> None:
    # One server has no replica: WAIT 1 answers 0 when its time is up.
    async with instance(plain_redis.connection(), prefix, wait_replicas=1, wait_timeout=0.1) as (
        _,
        outbox,
    ):
        with pytest.raises(SwitchboardError) as refused:
            await outbox.put("cust-w", {"text": "not kept"})

        assert "0 of 1 replicas" in str(refused.value)
        assert await outbox.peek("cust-w", 5) == []


@pytest.mark.parametrize("mode", ["sentinel", "cluster"])
async def test_a_put_waits_until_a_replica_has_it(
    mode: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    deployment = request.getfixturevalue(
        {"sentinel": "sentinel_group", "cluster": "redis_cluster"}[mode]
    )
    async with instance(deployment.connection(), prefix, wait_replicas=1, wait_timeout=2) as (
        _,
        outbox,
    ):
        for index in range(8):
            await outbox.put(f"cust-{index}", {"text": "kept by a replica too"})

        assert len(await outbox.waiting()) == 8


async def test_the_same_clients_work_on_after_a_cluster_master_dies(
    redis_cluster: RedisClusterServers, prefix: str
) -> None:
    async with instance(redis_cluster.connection(), prefix) as (board, outbox):
        await board.start(handoff("conv-failover"))
        key = board.keys.handoff("conv-failover")
        owner = _owner(redis_cluster, key_slot(redis_cluster.masters()[0], key))
        victim = next(node for node in redis_cluster.nodes if node.port == owner)
        loop = asyncio.get_running_loop()
        victim.kill()
        killed_at = time.monotonic()
        failures = 0
        try:
            while True:
                try:
                    async with board.in_line("conv-failover", True, 2.0) as place:
                        assert place.first
                        number = place.message_number
                    await outbox.put("conv-failover", {"text": "after the failover"})
                    break
                except SwitchboardError:
                    failures += 1
                    assert time.monotonic() - killed_at < 30, "the cluster never failed over"
                    await asyncio.sleep(0.2)
            back_after = time.monotonic() - killed_at
            print(
                f"\ncluster master killed: the same clients worked again after "
                f"{back_after:.2f} s ({failures} failed tries)"
            )
            # The handoff was written before the kill, and the replica had it.
            assert number == 2
            assert [fields["text"] for _, fields in await outbox.peek("conv-failover", 5)] == [
                "after the failover"
            ]
        finally:
            await loop.run_in_executor(None, restart_node, redis_cluster, victim)


async def test_the_subscriber_hears_again_when_its_cluster_node_dies(
    redis_cluster: RedisClusterServers, prefix: str
) -> None:
    # It starts on a replica: killing that leaves every slot served for the other tests.
    replica = redis_cluster.replicas_of_cluster()[0]
    others = [node for node in redis_cluster.nodes if node is not replica]
    listening = RedisClients(redis_cluster.connection(endpoints=[replica, *others]))
    # redis-py 4.6's RedisCluster cannot PUBLISH without a node: a plain client on others.
    publishing = create_pubsub_client(redis_cluster.connection(endpoints=others))
    heard: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    try:
        listening.subscriber.register(f"{prefix}nudge", heard.put_nowait)
        listening.subscriber.start()
        await asyncio.wait_for(listening.subscriber.connected.wait(), 10)
        replica.kill()
        killed_at = time.monotonic()

        while heard.empty():
            assert time.monotonic() - killed_at < 15, "never heard again"
            await publishing.publish(f"{prefix}nudge", "after")
            await asyncio.sleep(0.2)
        print(
            f"\nthe subscriber heard again {time.monotonic() - killed_at:.2f} s after its node died"
        )

        assert await heard.get() == "after"
    finally:
        await listening.close()
        await close_client(publishing)
        if not replica.alive:
            await loop.run_in_executor(None, restart_node, redis_cluster, replica)


async def test_a_master_that_lost_the_scripts_is_given_them_again(
    redis_cluster: RedisClusterServers, prefix: str
) -> None:
    async with instance(redis_cluster.connection(), prefix) as (board, outbox):
        await board.start(handoff("conv-noscript"))
        await _served_number(board, "conv-noscript")
        # A master restarted, or a replica just promoted: its script cache is empty.
        for master in redis_cluster.masters():
            master.call("SCRIPT", "FLUSH")

        assert await _served_number(board, "conv-noscript") == 3
        await outbox.put("conv-noscript", {"text": "after the flush"})
        head = await outbox.take("conv-noscript", "me", 5)
        assert head and head[0][1]["text"] == "after the flush"
        assert await board.claim_wait_notice("conv-noscript")
