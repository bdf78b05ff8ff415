"""One redis-server, reached through the block or the URL as before."""

import asyncio
from typing import Any

import pytest

from connectors.omnidesk.redis_connection import (
    RedisConnection,
    RedisPing,
    RedisUnavailable,
    close_client,
    create_client,
    create_pubsub_client,
)
from tests.e2e.stack import free_port
from tests.redis_servers import PlainRedis

pytestmark = pytest.mark.redis

TWO_KEYS = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('INCR', KEYS[2])"


async def next_message(pubsub: Any, timeout: float = 5.0) -> Any:
    """The next published message (not a subscribe confirmation), or None after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            return message
    return None


async def test_a_url_reaches_the_server_as_before(plain_redis: PlainRedis, key_prefix: str) -> None:
    client = create_client(RedisConnection.from_config(plain_redis.url))
    try:
        await client.set(f"{key_prefix}greeting", "hello")

        assert await client.get(f"{key_prefix}greeting") == "hello"
    finally:
        await close_client(client)


async def test_a_block_runs_a_script_on_two_keys(plain_redis: PlainRedis, key_prefix: str) -> None:
    client = create_client(plain_redis.connection(db=0, socket_timeout=2))
    try:
        script = client.register_script(TWO_KEYS)

        assert await script(keys=[f"{key_prefix}a", f"{key_prefix}n"], args=["x"]) == 1
        assert await client.get(f"{key_prefix}a") == "x"
    finally:
        await close_client(client)


async def test_a_subscriber_gets_what_another_client_publishes(
    plain_redis: PlainRedis, key_prefix: str
) -> None:
    connection = plain_redis.connection()
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


async def test_the_health_ping_answers_for_a_live_server(plain_redis: PlainRedis) -> None:
    ping = RedisPing(plain_redis.connection(), timeout=1.0)
    try:
        await ping()
    finally:
        await ping.close()


async def test_the_health_ping_says_why_when_nothing_listens() -> None:
    ping = RedisPing(RedisConnection.from_config({"host": "127.0.0.1", "port": free_port()}), 1.0)
    try:
        with pytest.raises(RedisUnavailable) as raised:
            await ping()
    finally:
        await ping.close()

    assert raised.value.reason == "connection failed"
    assert "redis://127.0.0.1:" in str(raised.value)
