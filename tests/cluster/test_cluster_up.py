"""The cluster comes up: both replicas behind nginx, a bot turn through it, trackers in PostgreSQL."""

import base64
import os
import socket
import time
import urllib.request

import aiohttp
import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.people import CallbackCustomer, SocketCustomer, poll
from tests.e2e.receiver import CallbackReceiver
from tests.e2e.test_journey import GREETING
from tests.e2e.test_loopback import LOOPBACK, listening_addresses

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
    # A turn with metadata (the channel's omnidesk.with_agent) starts the session
    # with Rasa's session_started_metadata slot, then action_session_start.
    first = events[0]
    if first["event"] == "slot" and first.get("name") == "session_started_metadata":
        first = events[1]
    assert first["event"] in {"action", "session_started"}, events[:3]
    # Nothing of this conversation is kept in a replica's memory only.
    assert time.time() - events[-1]["timestamp"] < 60


async def test_a_socketio_customer_talks_to_the_bot_through_nginx(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    # Long polling: every request of the session must reach the replica that
    # opened it, which nginx's ip_hash does for /socket.io/.
    customer = SocketCustomer(cluster.proxy_url, http)
    await customer.connect()
    try:
        await customer.say("hi")
        await customer.wait_for_text(GREETING)
    finally:
        await customer.close()


def test_the_websocket_upgrade_passes_through_nginx(cluster: Cluster) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{cluster.proxy.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", cluster.proxy.port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(1024)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer[:300]
    assert b"upgrade: websocket" in answer.lower()


def test_every_part_listens_on_127_0_0_1_only(cluster: Cluster) -> None:
    ports = {
        "nginx": cluster.proxy.port,
        "redis-server": cluster.redis.port,
        "PostgreSQL": cluster.postgres.port,
        "action server": int(cluster.actions_url.rsplit(":", 1)[1]),
        "sandbox": int(cluster.sandbox_url.rsplit(":", 1)[1]),
        **{replica.name: replica.port for replica in cluster.replicas},
    }
    for name, port in ports.items():
        addresses = listening_addresses(port)
        assert addresses, f"{name}: nothing listens on {port}"
        assert all(address == LOOPBACK for address, _ in addresses), (name, addresses)
