"""nginx refuses what would hurt Rasa before it reaches it (issue 13, item 6).

Sanic 21.12 under Rasa 3.6 spins at 100% CPU for good on ``Content-Length: -1``;
these requests go to nginx only, never to a replica directly.
"""

import socket
import time
import urllib.request
from typing import Optional

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.stack import http_status

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def raw_status(port: int, request: bytes, timeout: float = 5.0) -> int:
    """Send ``request`` as it is and return the status of the answer's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(1024)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    assert status_line.startswith("HTTP/1."), f"no HTTP answer: {answer[:200]!r}"
    return int(status_line.split()[1])


def post_with_length(path: str, length: str, body: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode() + body


def answered_in(url: str, within: float) -> Optional[int]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=within) as answer:
        status = int(answer.status)
    assert time.monotonic() - started < within
    return status


def replicas_still_answer(cluster: Cluster) -> None:
    """Each replica, and nginx in front of them, answers a normal request within 2 s."""
    cluster.check_alive()
    for replica in cluster.replicas:
        assert answered_in(f"{replica.url}/webhooks/omnidesk/", 2.0) == 200
    for _ in cluster.replicas:  # round-robin: once per replica
        assert answered_in(f"{cluster.proxy_url}/webhooks/omnidesk/", 2.0) == 200


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "0x10", "5, 5", "99999999999999999999999"])
@pytest.mark.parametrize(
    "path, logged",
    [
        (
            "/webhooks/omnidesk/hook/not-the-secret/messageForCustomer",
            "/webhooks/omnidesk/hook/***/messageForCustomer",
        ),
        ("/webhooks/callback/webhook", "/webhooks/callback/webhook"),
    ],
)
def test_a_bad_content_length_gets_400_from_nginx_and_rasa_keeps_answering(
    cluster: Cluster, path: str, logged: str, length: str
) -> None:
    before = len(cluster.proxy.upstreams_used(logged))
    assert raw_status(cluster.proxy.port, post_with_length(path, length, b"{}")) == 400
    # nginx answered it alone: no replica saw the request.
    assert cluster.proxy.wait_upstreams(logged, since=before, count=1) == ["-"]
    replicas_still_answer(cluster)


def test_the_hookpoint_secret_stays_out_of_the_access_log(cluster: Cluster) -> None:
    # Any answer will do (a GET is not a hookpoint call): it is the log line that counts.
    assert http_status(f"{cluster.hookpoint_base}/messageForCustomer") is not None
    log = cluster.proxy.access_log.read_text(errors="replace")
    secret = cluster.hookpoint_base.rsplit("/", 1)[1]
    assert secret not in log
    assert "/webhooks/omnidesk/hook/***/" in log


def test_a_body_over_the_upload_limit_gets_413_from_nginx(cluster: Cluster) -> None:
    eleven_mib_and_more = str(11 * 1024 * 1024 + 1)
    request = post_with_length("/webhooks/omnidesk/upload", eleven_mib_and_more)
    assert raw_status(cluster.proxy.port, request) == 413
    replicas_still_answer(cluster)


def test_a_body_sent_in_chunks_reaches_rasa_with_a_length(cluster: Cluster) -> None:
    """nginx reads a chunked body whole and sends Rasa a Content-Length of its own."""
    body = b'{"sender": "cluster-chunked", "message": "hi"}'
    request = (
        b"POST /webhooks/callback/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    assert raw_status(cluster.proxy.port, request, timeout=30) == 200
    replicas_still_answer(cluster)
