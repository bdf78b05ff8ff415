"""Omnidesk scripted behind a MockTransport: the client's logic tested with no socket.

The same script as the fake Omnidesk on loopback (``Reply`` per path: status,
body, headers, a hang, a dropped connection), answered by a function the
client's transport calls. Tests read back each request the client prepared:
method, path, query, headers, body and the timeout it gave the attempt.
"""

import asyncio
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Deque, Dict, List, Mapping
from urllib.parse import parse_qsl, urlsplit

from connectors.omnidesk.transport import (
    MockTransport,
    Request,
    Response,
    Timeout,
    TransportError,
)
from tests.client.fake_omnidesk import Reply

URL = "https://omnidesk.test"
DROPPED = "ServerDisconnectedError: Server disconnected"


@dataclass
class Sent:
    """One request as the client handed it to its transport."""

    method: str
    path: str
    query: Dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    timeout: Timeout
    arrived: float


class ScriptedOmnidesk:
    """Answers the client's requests from a script; ``url`` stands in for Omnidesk's host."""

    def __init__(self) -> None:
        self.url = URL
        self.requests: List[Sent] = []
        self.unreachable = False
        self._replies: Dict[str, Deque[Reply]] = defaultdict(deque)

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, then with success."""
        self._replies[path].extend(replies)

    def transport(self) -> MockTransport:
        """A transport of its own for each client (closing a client closes its transport)."""
        return MockTransport(self.answer)

    async def answer(self, request: Request) -> Response:
        if self.unreachable:
            raise TransportError("ClientConnectorError: Cannot connect to host omnidesk.test:443")
        parts = urlsplit(request.url)
        self.requests.append(
            Sent(
                method=request.method,
                path=parts.path,
                query=dict(parse_qsl(parts.query)),
                headers=request.headers,
                body=request.body,
                timeout=request.timeout,
                arrived=time.monotonic(),
            )
        )
        queue = self._replies[parts.path]
        reply = queue.popleft() if queue else Reply()
        if reply.drop:
            raise TransportError(DROPPED)
        if reply.hang:
            await asyncio.sleep(reply.hang)
        body = reply.payload()
        if isinstance(body, dict):
            return Response(
                reply.status,
                {"Content-Type": "application/json", **reply.headers},
                json.dumps(body).encode(),
            )
        return Response(reply.status, {"Content-Type": "text/html", **reply.headers}, body.encode())
