"""The benchmark's Redis counter counts what a client asked, against a real redis-server.

A round trip is a request the client sent and waited for: one for a command,
one for a MULTI/EXEC or a pipeline, one for a script whatever it calls inside.
Commands are every command redis-server ran, those inside scripts and
transactions too. The counter's own INFO calls never count.
"""

import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from bench.redis_traffic import Monitor, RedisCounter, Traffic, trace_requests
from tests.cluster.cluster import RedisServer
from tests.conftest import require_program

SCRIPT = (
    "redis.call('SET', KEYS[1], 1); redis.call('INCR', KEYS[1]); return redis.call('GET', KEYS[1])"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    program = require_program("redis-server", "redis-server")
    started = RedisServer.start(tmp_path / "redis.log", time.monotonic() + 30, program)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def counter(server: RedisServer) -> AsyncIterator[RedisCounter]:
    counting = RedisCounter("127.0.0.1", server.port)
    try:
        yield counting
    finally:
        await counting.close()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    connection = aioredis.from_url(server.url(), decode_responses=True)
    await connection.ping()  # the pool's connection is open before anything is counted
    try:
        yield connection
    finally:
        await connection.close()


async def test_the_counters_own_calls_do_not_count(counter: RedisCounter) -> None:
    first = await counter.snapshot()
    await counter.snapshot()
    await counter.snapshot()
    nothing = RedisCounter.between(first, await counter.snapshot())
    assert (nothing.reads, nothing.commands, nothing.bytes_in, nothing.bytes_out) == (0, 0, 0, 0)


async def test_one_command_is_one_round_trip(counter: RedisCounter, client: Any) -> None:
    first = await counter.snapshot()
    await client.set("a", "1")
    await client.get("a")
    traffic = RedisCounter.between(first, await counter.snapshot())
    assert traffic.reads == 2
    assert traffic.calls == {"set": 1, "get": 1}
    assert traffic.bytes_in > 0 and traffic.bytes_out > 0


async def test_a_transaction_or_a_pipeline_is_one_round_trip_of_many_commands(
    counter: RedisCounter, client: Any
) -> None:
    first = await counter.snapshot()
    transaction = client.pipeline(transaction=True)
    transaction.xadd("stream", {"e": "x"}).sadd("waiting", "c").expire("stream", 60)
    transaction.publish("nudge", "c")
    await transaction.execute()
    traffic = RedisCounter.between(first, await counter.snapshot())
    assert traffic.reads == 1
    assert traffic.calls == {"multi": 1, "xadd": 1, "sadd": 1, "expire": 1, "publish": 1, "exec": 1}

    first = await counter.snapshot()
    pipeline = client.pipeline(transaction=False)
    for i in range(50):
        pipeline.xlen(f"stream-{i}")
    await pipeline.execute()
    traffic = RedisCounter.between(first, await counter.snapshot())
    assert traffic.reads == 1
    assert traffic.calls == {"xlen": 50}


async def test_a_script_is_one_round_trip_and_counts_what_it_calls(
    counter: RedisCounter, client: Any
) -> None:
    script = client.register_script(SCRIPT)
    await script(keys=["k"])  # loaded once (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA)
    first = await counter.snapshot()
    await script(keys=["k"])
    traffic = RedisCounter.between(first, await counter.snapshot())
    assert traffic.reads == 1
    assert traffic.calls == {"evalsha": 1, "set": 1, "incr": 1, "get": 1}


def test_background_is_taken_off_in_proportion_to_the_window() -> None:
    background = Traffic(
        seconds=1.0, reads=2.0, bytes_in=100.0, bytes_out=50.0, calls={"smembers": 2.0}
    )
    window = Traffic(
        seconds=3.0,
        reads=36.0,
        bytes_in=900.0,
        bytes_out=450.0,
        calls={"smembers": 6.0, "evalsha": 30.0},
    )
    net = window.minus(background)
    assert net.reads == 30.0 and net.bytes_in == 600.0 and net.bytes_out == 300.0
    assert net.calls == {"smembers": 0.0, "evalsha": 30.0}
    per = net.per(10)
    assert per["round_trips"] == 3.0 and per["commands"] == 3.0
    assert per["by_command"] == {"evalsha": 3.0}
    assert window.rate().reads == 12.0


async def test_a_trace_shows_each_request_and_what_it_held(
    server: RedisServer, client: Any
) -> None:
    script = client.register_script(SCRIPT)
    await script(keys=["k"])

    async def one_turn() -> None:
        await script(keys=["handoff:conversation-7"])
        transaction = client.pipeline(transaction=True)
        transaction.xadd("outbox:conversation-7", {"e": "a secret text"}).sadd("waiting", "c")
        await transaction.execute()
        await client.get("chat:chat-9")

    traced = await Monitor("127.0.0.1", server.port).trace(one_turn)
    requests = trace_requests(traced, {"<conversation>": "conversation-7", "<chat>": "chat-9"})
    assert requests == [
        "#1 EVALSHA handoff:<conversation> [SET, INCR, GET]",
        "#1 MULTI/EXEC [XADD outbox:<conversation>, SADD waiting]",
        "#1 GET chat:<chat>",
    ]
    assert "secret" not in repr(traced)
