"""A rest customer's client, as docs/channel.md ("rest") describes one, for the tests.

``RestCustomer`` posts turns to Rasa's rest webhook and reads the answers,
keeps the handoff's details when an answer carries them, long-polls
``messages_url`` with its cursor and opens ``stream_url`` (a ticket first, then
Server-Sent Events, read by ``EventStream``). Every call is a real HTTP call;
nothing here knows the connector's insides. The channel, end-to-end and
cluster tests share it.
"""

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import aiohttp

TOKEN_HEADER = "X-Omnidesk-Customer-Token"


@dataclass
class Event:
    """One Server-Sent Event: its name ("message" when unnamed), id and parsed data."""

    name: str
    id: Optional[str]
    data: Dict[str, Any]


class EventStream:
    """Reads a text/event-stream response event by event; comments are counted, not returned."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0
        self.retry: Optional[int] = None
        self.last_id: Optional[str] = None

    async def next(self, timeout: float = 10.0) -> Optional[Event]:
        """The next event; None when the server closed the stream."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Optional[Event]:
        name, event_id, data = "message", None, []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return None
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    if event_id is not None:
                        self.last_id = event_id
                    return Event(name, event_id, json.loads("\n".join(data)))
                name, event_id = "message", None
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "id":
                event_id = value
            elif key == "data":
                data.append(value)
            elif key == "retry":
                self.retry = int(value)

    async def until(self, wanted: int, timeout: float = 10.0) -> List[Event]:
        """The next ``wanted`` events (fewer if the stream closes)."""
        events: List[Event] = []
        while len(events) < wanted:
            event = await self.next(timeout)
            if event is None:
                break
            events.append(event)
        return events


@dataclass
class RestCustomer:
    """A customer of Rasa's rest channel, with the handoff's details once it has them."""

    url: str  # where Rasa serves (the webhook is url + /webhooks/rest/webhook)
    sender: str
    http: aiohttp.ClientSession
    details: Dict[str, Any] = field(default_factory=dict)
    answers: List[List[Dict[str, Any]]] = field(default_factory=list)

    async def say(self, text: str) -> List[Dict[str, Any]]:
        """Post a turn; the answer's messages (the handoff's details kept when present)."""
        async with self.http.post(
            f"{self.url}/webhooks/rest/webhook", json={"sender": self.sender, "message": text}
        ) as answer:
            assert answer.status == 200, await answer.text()
            messages: List[Dict[str, Any]] = await answer.json()
        for message in messages:
            custom = message.get("custom")
            if isinstance(custom, dict) and "omnidesk_customer" in custom:
                self.details = dict(custom["omnidesk_customer"])
        self.answers.append(messages)
        return messages

    @property
    def token(self) -> str:
        return str(self.details.get("customer_token", ""))

    async def poll(
        self, after: Optional[str] = None, wait: Optional[float] = None, token: Optional[str] = None
    ) -> Tuple[int, List[Dict[str, Any]], Dict[str, str]]:
        """GET messages_url: (status, messages, headers)."""
        params = {"sender": self.sender}
        if after is not None:
            params["after"] = after
        if wait is not None:
            params["wait"] = str(wait)
        async with self.http.get(
            self.details["messages_url"],
            params=params,
            headers={TOKEN_HEADER: self.token if token is None else token},
        ) as answer:
            body = await answer.read()
            messages = json.loads(body) if body and answer.status == 200 else []
            if answer.status not in (200, 204):
                messages = [json.loads(body)] if body else []
            return answer.status, messages, dict(answer.headers)

    async def ticket(self, token: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
        """POST stream_url: (status, {"url", "expires_in"} or the error)."""
        async with self.http.post(
            self.details["stream_url"],
            json={"sender": self.sender},
            headers={TOKEN_HEADER: self.token if token is None else token},
        ) as answer:
            return answer.status, await answer.json()

    @asynccontextmanager
    async def stream(
        self, after: Optional[str] = None, last_event_id: Optional[str] = None
    ) -> AsyncIterator[Tuple[int, Optional[EventStream]]]:
        """A fresh ticket, then the stream: (status, the events while 200)."""
        status, body = await self.ticket()
        assert status == 200, body
        async with self.open(body["url"], after, last_event_id) as opened:
            yield opened

    @asynccontextmanager
    async def open(
        self, url: str, after: Optional[str] = None, last_event_id: Optional[str] = None
    ) -> AsyncIterator[Tuple[int, Optional[EventStream]]]:
        """GET a stream URL as an EventSource does (Last-Event-ID when resuming)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        params = {} if after is None else {"after": after}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.http.get(url, params=params, headers=headers, timeout=timeout) as answer:
            if answer.status != 200:
                await answer.read()
                yield answer.status, None
            else:
                yield answer.status, EventStream(answer)


def texts(messages: List[Dict[str, Any]]) -> List[str]:
    return [str(m["text"]) for m in messages if m.get("text")]
