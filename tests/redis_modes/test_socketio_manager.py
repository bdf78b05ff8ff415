"""python-socketio's AsyncRedisManager on every mode: a customer's socket is on one server,
the agent's message is emitted on another, and it arrives through Redis.

Two real socket.io servers (aiohttp on loopback) each have a manager made from
``socketio_manager_options``; a real socket.io client connects to the first.
"""

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, List, Tuple

import pytest
import socketio
from aiohttp import web

from connectors.omnidesk.redis_connection import RedisConnection, socketio_manager_options
from connectors.omnidesk.tasks import stop
from tests.redis_modes.test_cluster import restart_node
from tests.redis_servers import PlainRedis, RedisClusterServers, SentinelGroup, TlsRedis

pytestmark = pytest.mark.redis

CHANNEL = "omnidesk-socketio-test"


@asynccontextmanager
async def socketio_server(connection: RedisConnection) -> AsyncIterator[Any]:
    """A socket.io server on a free loopback port sharing its emits through ``connection``."""
    options = socketio_manager_options(connection)
    manager = socketio.AsyncRedisManager(
        options.url, channel=CHANNEL, redis_options=options.manager_options()
    )
    # A long poll is answered at the latest after ping_interval: a short one lets the
    # client say goodbye, and the server stop, without waiting 25 s.
    server = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=manager, ping_interval=1, ping_timeout=2
    )
    app = web.Application()
    server.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=1.0)
    await site.start()
    server.test_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        # Ends the sessions (and their long polls) the client left behind.
        await server.shutdown()
        listener = getattr(manager, "thread", None)
        if listener is not None:
            await stop(listener)
        redis = getattr(manager, "redis", None)
        if redis is not None:
            await redis.connection_pool.disconnect()
        await runner.cleanup()


async def emit_until_heard(
    second: Any, sid: str, received: "asyncio.Queue[Dict[str, Any]]", within: float
) -> List[Dict[str, Any]]:
    """Emit on ``second`` every 0.2 s until the socket hears it (a listener subscribes
    once its first socket connects, and again after it loses its Redis)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        await second.emit("bot_uttered", {"text": "an agent here"}, to=sid)
        try:
            return [await asyncio.wait_for(received.get(), 0.2)]
        except asyncio.TimeoutError:
            continue
    return []


@asynccontextmanager
async def socket_on_first_server(
    connection: RedisConnection,
) -> AsyncIterator[Tuple[Any, str, "asyncio.Queue[Dict[str, Any]]"]]:
    """Two servers; a customer's socket on the first. Yields the second, the socket's id,
    and what the socket hears."""
    received: asyncio.Queue[Dict[str, Any]] = asyncio.Queue()
    async with socketio_server(connection) as first, socketio_server(connection) as second:
        client = socketio.AsyncClient(reconnection=False)
        client.on("bot_uttered", received.put)
        await client.connect(first.test_url, transports=["polling"])
        try:
            yield second, client.get_sid(), received
        finally:
            await client.disconnect()


@pytest.fixture(params=["standard", "sentinel", "cluster", "tls"])
def connection(request: pytest.FixtureRequest) -> RedisConnection:
    mode = request.param
    if mode == "standard":
        plain: PlainRedis = request.getfixturevalue("plain_redis")
        return plain.connection()
    if mode == "sentinel":
        group: SentinelGroup = request.getfixturevalue("sentinel_group")
        return group.connection()
    if mode == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        return cluster.connection()
    tls: TlsRedis = request.getfixturevalue("tls_redis")
    return tls.connection()


async def test_an_emit_on_one_server_reaches_a_socket_on_another(
    connection: RedisConnection,
) -> None:
    async with socket_on_first_server(connection) as (second, sid, received):
        heard = await emit_until_heard(second, sid, received, within=10.0)

    assert heard == [{"text": "an agent here"}]


async def test_in_a_cluster_emits_go_on_when_the_listeners_node_dies(
    redis_cluster: RedisClusterServers,
) -> None:
    # The managers start on a replica: killing it leaves the cluster whole for other tests.
    replica = redis_cluster.replicas_of_cluster()[0]
    others = [node for node in redis_cluster.nodes if node is not replica]
    connection = redis_cluster.connection(endpoints=[replica, *others])
    try:
        async with socket_on_first_server(connection) as (second, sid, received):
            assert await emit_until_heard(second, sid, received, within=10.0)
            replica.kill()

            # python-socketio's listener retries after 1 s, 2 s, ...: a new connection
            # goes to the next node.
            heard = await emit_until_heard(second, sid, received, within=15.0)
    finally:
        if not replica.alive:
            await asyncio.get_running_loop().run_in_executor(
                None, restart_node, redis_cluster, replica
            )

    assert heard == [{"text": "an agent here"}]
