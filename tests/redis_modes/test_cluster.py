"""A Redis Cluster of 3 masters with a replica each: keys go to their slot's master,
scripts need their keys in one slot (a hash tag), pub/sub reaches every node."""

import asyncio
import time
from typing import Any, Dict, List

import pytest

from connectors.omnidesk.redis_connection import (
    RedisAddress,
    RedisPing,
    close_client,
    create_client,
    create_pubsub_client,
    hash_tag,
)
from tests.redis_modes.test_standard import TWO_KEYS, next_message
from tests.redis_servers import RedisClusterServers, RedisNode

pytestmark = pytest.mark.redis


def key_slot(node: RedisNode, key: str) -> int:
    return int(node.call("CLUSTER", "KEYSLOT", key))


def keys_on_every_master(cluster: RedisClusterServers, prefix: str) -> List[str]:
    """Keys whose slots are served by each of the masters, one key per master."""
    masters = cluster.masters()
    owners: Dict[int, str] = {}
    for index in range(200):
        key = f"{prefix}key-{index}"
        owner = cluster.node_at(_owner(masters[0], key_slot(masters[0], key)))
        owners.setdefault(owner.port, key)
        if len(owners) == len(masters):
            break
    return list(owners.values())


def _owner(node: RedisNode, slot: int) -> RedisAddress:
    for start, end, master, *_ in node.call("CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return RedisAddress(str(master[0]), int(master[1]))
    raise AssertionError(f"no master serves slot {slot}")


async def test_keys_on_every_master_are_written_and_read_through_one_client(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    # Without the hash tag, each key lands where its own name hashes.
    keys = keys_on_every_master(redis_cluster, key_prefix.strip("{}:") + ":")
    assert len(keys) == 3
    client = create_client(redis_cluster.connection())
    try:
        for key in keys:
            await client.set(key, f"value of {key}")

        assert [await client.get(key) for key in keys] == [f"value of {key}" for key in keys]
    finally:
        await close_client(client)


async def test_a_script_on_two_keys_with_one_hash_tag_runs(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    client = create_client(redis_cluster.connection())
    try:
        script = client.register_script(TWO_KEYS)

        assert await script(keys=[f"{key_prefix}handoff", f"{key_prefix}n"], args=["x"]) == 1
        assert await client.get(f"{key_prefix}handoff") == "x"
    finally:
        await close_client(client)


async def test_a_script_whose_keys_hash_to_different_slots_is_refused(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    tag = key_prefix.strip("{}:")
    apart = [f"{tag}:handoff", f"{tag}:waiting"]  # no hash tag: two slots
    master = redis_cluster.masters()[0]
    assert key_slot(master, apart[0]) != key_slot(master, apart[1])

    # The server refuses it, whichever master is asked...
    with pytest.raises(Exception) as by_server:
        master.call("EVAL", TWO_KEYS, 2, *apart, "x")
    # CROSSSLOT; newer redis-py raises it as ClusterCrossSlotError, without the word.
    assert "don't hash to the same slot" in str(by_server.value)

    # ... and through the cluster client: redis-py 4.6 refuses it before sending it,
    # newer redis-py passes the server's refusal on.
    client = create_client(redis_cluster.connection())
    try:
        with pytest.raises(Exception) as by_client:
            await client.register_script(TWO_KEYS)(keys=apart, args=["x"])
        refusal = str(by_client.value)
        assert "same key slot" in refusal or "don't hash to the same slot" in refusal
    finally:
        await close_client(client)


async def test_a_message_published_on_one_node_reaches_a_subscriber_on_another(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    masters = redis_cluster.masters()
    replica = redis_cluster.replicas_of_cluster()[0]
    subscriber = create_pubsub_client(redis_cluster.connection(endpoints=[replica]))
    publisher = create_pubsub_client(redis_cluster.connection(endpoints=[masters[0]]))
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe(f"{key_prefix}nudge")
        assert pubsub.connection.port == replica.port

        await publisher.publish(f"{key_prefix}nudge", "wake up")

        message = await next_message(pubsub)
        assert message is not None and message["data"] == "wake up"
    finally:
        await pubsub.unsubscribe()
        await close_client(subscriber)
        await close_client(publisher)


async def test_a_subscriber_moves_to_another_node_when_its_node_dies(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    # A replica: killing it leaves every slot served for the other tests.
    replica = redis_cluster.replicas_of_cluster()[0]
    others = [node for node in redis_cluster.nodes if node is not replica]
    subscriber = create_pubsub_client(redis_cluster.connection(endpoints=[replica, *others]))
    publisher = create_pubsub_client(redis_cluster.connection(endpoints=others))
    pubsub = subscriber.pubsub()
    channel = f"{key_prefix}nudge"
    try:
        await pubsub.subscribe(channel)
        assert pubsub.connection.port == replica.port
        replica.kill()

        received = await _publish_until_received(publisher, pubsub, channel, within=15.0)

        assert received == "wake up"
        assert pubsub.connection.port != replica.port
    finally:
        await pubsub.unsubscribe()
        await close_client(subscriber)
        await close_client(publisher)
        loop = asyncio.get_running_loop()
        if not replica.alive:
            await loop.run_in_executor(None, restart_node, redis_cluster, replica)


def restart_node(cluster: RedisClusterServers, node: RedisNode) -> None:
    """Start a killed node again; it rejoins from its nodes.conf. Blocks: run it in a thread."""
    deadline = time.monotonic() + 30
    node.start(deadline)
    cluster.wait_healthy(deadline)


async def _publish_until_received(publisher: Any, pubsub: Any, channel: str, within: float) -> Any:
    """Publish every 0.2 s until the subscriber, reconnecting as a listener does, gets one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        await publisher.publish(channel, "wake up")
        try:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        except (ConnectionError, OSError) as error:
            print(f"subscriber lost its node ({type(error).__name__}); reconnecting")
            await asyncio.sleep(0.1)
            continue
        except Exception as error:  # redis-py's ConnectionError is no builtin one
            if "Connection" not in type(error).__name__:
                raise
            await asyncio.sleep(0.1)
            continue
        if message is not None:
            return message["data"]
    return None


async def test_the_health_ping_reaches_every_master(redis_cluster: RedisClusterServers) -> None:
    ping = RedisPing(redis_cluster.connection(endpoints=redis_cluster.nodes[:1]), timeout=2.0)
    try:
        await ping()
    finally:
        await ping.close()


@pytest.mark.parametrize("conversation_id", ["customer-42", "}odd{id", "{", ""])
async def test_keys_tagged_with_any_conversation_id_share_one_slot(
    redis_cluster: RedisClusterServers, conversation_id: str
) -> None:
    tag = hash_tag(conversation_id)
    keys = [f"omnidesk:{tag}:handoff", f"omnidesk:outbox:{tag}", f"omnidesk:{tag}:lease"]
    master = redis_cluster.masters()[0]

    assert len({key_slot(master, key) for key in keys}) == 1
    client = create_client(redis_cluster.connection())
    try:
        assert await client.register_script(TWO_KEYS)(keys=keys[:2], args=["x"]) == 1
    finally:
        await client.delete(*keys[:2])
        await close_client(client)
