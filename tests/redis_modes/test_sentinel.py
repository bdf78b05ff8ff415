"""A Sentinel group (a master, a replica, 3 sentinels): the client asks the sentinels for
the master, and when the master is killed and the replica promoted, the same client
keeps working. The failover tests measure how long writes fail and what an
acknowledged write is worth through it."""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import pytest

from connectors.omnidesk.redis_connection import (
    RedisPing,
    RedisUnavailable,
    close_client,
    create_client,
    create_pubsub_client,
)
from tests.redis_modes.test_standard import TWO_KEYS, next_message
from tests.redis_servers import SentinelGroup

pytestmark = pytest.mark.redis

# Down after 1 s, then the election and the promotion: writes resume well within this.
FAILOVER_BOUND = 30.0
WRITE_EVERY = 0.02


def is_connection_failure(error: BaseException) -> bool:
    """What a client sees while the master is gone: refused, reset, timed out, or no master."""
    from redis import exceptions

    return isinstance(
        error,
        (exceptions.ConnectionError, exceptions.TimeoutError, ConnectionError, OSError),
    ) or "READONLY" in str(error)


async def test_a_client_reaches_the_master_the_sentinels_name(
    sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    client = create_client(sentinel_group.connection())
    try:
        script = client.register_script(TWO_KEYS)

        assert await script(keys=[f"{key_prefix}a", f"{key_prefix}n"], args=["x"]) == 1
        assert await client.get(f"{key_prefix}a") == "x"
        master = sentinel_group.node_at(sentinel_group.current_master())
        assert master.call("GET", f"{key_prefix}a") == "x"
    finally:
        await close_client(client)


async def test_a_subscriber_gets_what_another_client_publishes(
    sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    connection = sentinel_group.connection()
    subscriber, publisher = create_pubsub_client(connection), create_pubsub_client(connection)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe(f"{key_prefix}nudge")
        await publisher.publish(f"{key_prefix}nudge", "wake up")

        message = await next_message(pubsub)

        assert message is not None and message["data"] == "wake up"
    finally:
        await pubsub.unsubscribe()
        await close_client(subscriber)
        await close_client(publisher)


async def test_the_health_ping_answers_through_the_sentinels(sentinel_group: SentinelGroup) -> None:
    ping = RedisPing(sentinel_group.connection(), timeout=2.0)
    try:
        await ping()
    finally:
        await ping.close()


async def test_the_health_ping_says_so_when_no_sentinel_knows_the_service(
    sentinel_group: SentinelGroup,
) -> None:
    ping = RedisPing(sentinel_group.connection(sentinel_service="no-such-service"), timeout=2.0)
    try:
        with pytest.raises(RedisUnavailable) as raised:
            await ping()
    finally:
        await ping.close()

    assert "no sentinel names a master" in raised.value.reason


@dataclass
class Writes:
    """What a writer saw: each write acknowledged and when, when writes failed."""

    # (key, when) of each write the master acknowledged; with WAIT 1 or without.
    acknowledged: List[Tuple[str, float]] = field(default_factory=list)
    replicated: List[Tuple[str, float]] = field(default_factory=list)
    failures: int = 0
    first_failure: Optional[float] = None
    last_failure: Optional[float] = None


async def write_through_failover(
    client: Any, prefix: str, enough_before_kill: "asyncio.Event", writes: Writes
) -> None:
    """Write ``prefix<n>`` every WRITE_EVERY s until 20 writes in a row went through after
    a failure; every other write waits (WAIT 1) for the replica's copy."""
    number = 0
    in_a_row_after_failure = 0
    while in_a_row_after_failure < 20:
        number += 1
        key = f"{prefix}{number}"
        try:
            await client.set(key, number)
            waited = number % 2 == 0
            copies = await client.execute_command("WAIT", 1, 200) if waited else 0
            (writes.replicated if copies >= 1 else writes.acknowledged).append(
                (key, time.monotonic())
            )
            if writes.first_failure is not None:
                in_a_row_after_failure += 1
        except Exception as error:
            if not is_connection_failure(error):
                raise
            now = time.monotonic()
            writes.failures += 1
            writes.first_failure = writes.first_failure or now
            writes.last_failure = now
            in_a_row_after_failure = 0
        if number == 50:
            enough_before_kill.set()
        await asyncio.sleep(WRITE_EVERY)


async def missing(client: Any, written: List[Tuple[str, float]], before: float) -> List[str]:
    """The keys written before ``before`` that the (new) master does not have."""
    return [key for key, when in written if when <= before and await client.get(key) is None]


async def test_writes_resume_on_the_promoted_replica_and_waited_writes_survive(
    fresh_sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    group = fresh_sentinel_group
    # Short socket timeouts: a command to the dead master fails fast, then is written again.
    client = create_client(group.connection(socket_timeout=0.5), retries=0)
    writes = Writes()
    loop = asyncio.get_running_loop()
    enough = asyncio.Event()
    writer = asyncio.ensure_future(write_through_failover(client, key_prefix, enough, writes))
    try:
        await asyncio.wait_for(enough.wait(), 10)
        old_master = group.kill_master()
        killed_at = time.monotonic()
        new_master = await loop.run_in_executor(None, group.wait_for_new_master, FAILOVER_BOUND)
        promoted_at = time.monotonic()
        await asyncio.wait_for(writer, FAILOVER_BOUND)

        assert new_master.port != old_master.port
        assert writes.failures > 0 and writes.last_failure is not None
        lost = await missing(client, writes.acknowledged, killed_at)
        lost_replicated = await missing(client, writes.replicated, killed_at)
        # The old master comes back empty and the sentinels make it a replica of the new one.
        returned = await loop.run_in_executor(None, group.restart_old_master, FAILOVER_BOUND)
        last_key = writes.replicated[-1][0]
        assert returned.info("replication")["role"] == "slave"
        assert returned.call("GET", last_key) == await client.get(last_key)
    finally:
        writer.cancel()
        await close_client(client)

    outage = writes.last_failure - killed_at
    acknowledged = sum(1 for _, when in writes.acknowledged if when <= killed_at)
    replicated = sum(1 for _, when in writes.replicated if when <= killed_at)
    print(
        f"\nsentinel failover: promoted {promoted_at - killed_at:.2f} s after the kill; "
        f"writes failed for {outage:.2f} s ({writes.failures} failed tries, one every "
        f"{WRITE_EVERY:g} s or the 0.5 s timeout); before the kill: acknowledged writes "
        f"lost {len(lost)} of {acknowledged}, writes confirmed by WAIT 1 lost "
        f"{len(lost_replicated)} of {replicated}"
    )
    # The same client, no restart: writes went on once the replica was promoted.
    assert outage < FAILOVER_BOUND
    # A write the replica had confirmed (WAIT 1) is on the promoted replica.
    assert replicated > 0 and lost_replicated == []


async def test_a_subscriber_hears_again_after_the_failover(
    fresh_sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    group = fresh_sentinel_group
    connection = group.connection()
    subscriber, publisher = create_pubsub_client(connection), create_pubsub_client(connection)
    pubsub = subscriber.pubsub()
    channel = f"{key_prefix}nudge"
    loop = asyncio.get_running_loop()
    try:
        await pubsub.subscribe(channel)
        old_master = group.kill_master()
        killed_at = time.monotonic()
        await loop.run_in_executor(None, group.wait_for_new_master, FAILOVER_BOUND)

        heard: Optional[Any] = None
        while heard is None and time.monotonic() - killed_at < FAILOVER_BOUND:
            try:
                await publisher.publish(channel, "wake up")
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            except Exception as error:
                if not is_connection_failure(error):
                    raise
                await asyncio.sleep(0.1)
                continue
            heard = message["data"] if message else None
        heard_after = time.monotonic() - killed_at

        assert heard == "wake up"
        assert pubsub.connection.port != old_master.port
        print(f"\nsentinel failover: the subscriber heard again {heard_after:.2f} s after the kill")
    finally:
        await pubsub.unsubscribe()
        await close_client(subscriber)
        await close_client(publisher)
