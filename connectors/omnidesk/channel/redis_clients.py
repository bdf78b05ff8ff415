"""The Redis clients one Rasa process shares, made from the connection setting.

One data client (commands, Lua scripts, pipelines) serves the switchboard, the
tracker records and the outbox; one subscriber connection hears every pub/sub
channel the process listens to (the line's wake-ups, the outbox's nudges). Both
follow the setting's mode (redis_connection.py): one server, the master a
Sentinel group names, or a Redis Cluster. A failover or a lost node needs no
restart: the data client finds the new master on its next connection (Sentinel)
or re-reads the slots (Cluster), and the subscriber connects again.

What a Cluster changes for the callers, all in ``RedisClients``: a pipeline whose
commands span slots is sent per node and is never a transaction; a script queued
in a pipeline goes as ``EVAL`` (no script cache to miss on a node that just took
over), a ``PUBLISH`` or ``WAIT`` in a pipeline is sent to the node of a key the
caller names, so it follows that key's writes on the same connection.
"""

import asyncio
import contextlib
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from connectors.omnidesk import tasks
from connectors.omnidesk.redis_connection import (
    CLOSE_WITHIN,
    DEFAULT_SOCKET_TIMEOUT,
    RedisConnection,
    RedisMode,
    close_client,
    create_client,
    create_pubsub_client,
)

logger = logging.getLogger(__name__)

# How long the subscriber waits between two tries to connect again, at most.
RESUBSCRIBE_MAX_WAIT = 2.0
# How often the subscriber looks for channels added since it subscribed.
SUBSCRIBE_CHECK_EVERY = 1.0


class Subscriber:
    """One pub/sub connection for every channel this process listens to.

    ``register`` adds a channel and what to do with each message on it (and,
    optionally, after a reconnect: messages published meanwhile are lost, so a
    listener looks again). The connection is opened by ``start`` and comes back
    after a failover or the loss of its node, with backoff; an outage is logged
    once, and its end once.
    """

    def __init__(self, client: Any, where: str) -> None:
        """``client``: a client of ``create_pubsub_client``; the subscriber closes it."""
        self._client = client
        self._where = where
        self._handlers: Dict[str, Callable[[str], None]] = {}
        self._on_reconnect: Dict[str, Callable[[], None]] = {}
        self._running: Optional[asyncio.Task[None]] = None
        self.connected = asyncio.Event()

    def register(
        self,
        channel: str,
        on_message: Callable[[str], None],
        on_reconnect: Optional[Callable[[], None]] = None,
    ) -> None:
        self._handlers[channel] = on_message
        if on_reconnect is not None:
            self._on_reconnect[channel] = on_reconnect

    def start(self) -> None:
        """Listen, in the background, until ``close``; calling it again does nothing."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        failing: Optional[str] = None
        wait = 0.1
        first = True
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            subscribed: List[str] = []
            try:
                await self._subscribe(pubsub, subscribed)
                if failing is not None:
                    logger.info("Redis pub/sub (%s) heard again.", ", ".join(subscribed))
                    failing = None
                if not first:
                    for channel in subscribed:
                        again = self._on_reconnect.get(channel)
                        if again is not None:
                            again()
                first = False
                wait = 0.1
                self.connected.set()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=SUBSCRIBE_CHECK_EVERY
                    )
                    if message is not None and message.get("type") == "message":
                        handler = self._handlers.get(_text(message.get("channel")))
                        if handler is not None:
                            handler(_text(message.get("data")))
                    if len(subscribed) < len(self._handlers):
                        await self._subscribe(pubsub, subscribed)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure: connect again; the polls cover the gap
                self.connected.clear()
                reason = f"{type(error).__name__}: {error}"
                if failing is None:
                    logger.error(
                        "Redis pub/sub (%s) lost, connecting again; meanwhile waiting turns "
                        "and messages are found by polling: %s",
                        self._where,
                        reason,
                    )
                failing = reason
                await asyncio.sleep(wait)
                wait = min(wait * 2, RESUBSCRIBE_MAX_WAIT)
            finally:
                with contextlib.suppress(Exception):
                    await _close_pubsub(pubsub)

    async def _subscribe(self, pubsub: Any, subscribed: List[str]) -> None:
        fresh = [channel for channel in self._handlers if channel not in subscribed]
        if fresh:
            await pubsub.subscribe(*fresh)
            subscribed.extend(fresh)

    async def close(self) -> None:
        await tasks.stop(self._running)
        self._running = None
        await close_client(self._client)


async def _close_pubsub(pubsub: Any) -> None:
    """Close a pub/sub connection without waiting on its peer.

    redis-py's close waits for the socket's close to complete, which can hang
    (redis/redis-py#3941); the socket is dropped first, the rest is bounded.
    """
    connection = getattr(pubsub, "connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)
    aclose = getattr(pubsub, "aclose", None)
    closed = aclose() if aclose is not None else pubsub.close()
    if asyncio.iscoroutine(closed):
        await asyncio.wait_for(closed, CLOSE_WITHIN)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisClients:
    """The data client and the subscriber of one process, for one Redis connection.

    Made once by the channel and handed to the switchboard and the outbox store;
    ``close`` closes both. ``timeout`` bounds each command's answer.
    """

    def __init__(self, connection: RedisConnection, timeout: Optional[float] = None) -> None:
        self.connection = connection
        self.timeout = timeout or connection.socket_timeout or DEFAULT_SOCKET_TIMEOUT
        # No retry inside redis-py: a command whose connection broke may have run, and
        # only the caller knows whether running it twice is harmless (redis-py 4.6
        # retries nothing by default, newer redis-py three times).
        self.data: Any = create_client(connection, socket_timeout=self.timeout, retries=0)
        self.subscriber = Subscriber(
            create_pubsub_client(connection, health_check_interval=30), connection.for_logs()
        )

    @classmethod
    def for_url(cls, url: str, timeout: Optional[float] = None) -> "RedisClients":
        return cls(RedisConnection.from_url(url, setting="switchboard_url"), timeout)

    @property
    def cluster(self) -> bool:
        return self.connection.mode is RedisMode.CLUSTER

    def pipeline(self) -> Any:
        """A pipeline sent in one round trip (per node on a Cluster); never a transaction."""
        return self.data.pipeline(transaction=False)

    async def prepare(self) -> None:
        """On a Cluster, know which node serves which slot (before ``node_of``)."""
        if self.cluster:
            await self.data.initialize()

    def node_of(self, key: str) -> Any:
        """The Cluster node serving ``key``'s slot now (``prepare`` first); None elsewhere."""
        if not self.cluster:
            return None
        return self.data.get_node_from_key(key)

    def queue_script(
        self, pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]
    ) -> None:
        """Queue a registered script in ``pipe`` as EVAL: no script cache to load first.

        redis-py's own way (EVALSHA, after SCRIPT EXISTS on every execute) costs a
        round trip, and a Cluster pipeline has no way to load a missing script.
        """
        pipe.eval(script.script, len(keys), *keys, *args)

    def queue_publish(self, pipe: Any, channel: str, message: str, near: str) -> None:
        """Queue a PUBLISH; on a Cluster on ``near``'s node (``prepare`` first), so it is
        sent after that key's writes on the same connection."""
        if self.cluster:
            pipe.execute_command("PUBLISH", channel, message, target_nodes=self.node_of(near))
        else:
            pipe.publish(channel, message)

    def queue_wait(self, pipe: Any, replicas: int, timeout: float, keys: Sequence[str]) -> int:
        """Queue WAIT after the writes to ``keys``: one per node that took them (``prepare``
        first on a Cluster). Returns how many answers it added at the end of the pipeline."""
        milliseconds = max(1, int(timeout * 1000))
        if not self.cluster:
            pipe.execute_command("WAIT", replicas, milliseconds)
            return 1
        nodes: Dict[str, Any] = {}
        for key in keys:
            node = self.node_of(key)
            nodes.setdefault(node.name, node)
        for node in nodes.values():
            pipe.execute_command("WAIT", replicas, milliseconds, target_nodes=node)
        return len(nodes)

    async def close(self) -> None:
        await self.subscriber.close()
        await close_client(self.data)
