"""Property-based fuzzing of every connector route: never a 5xx, and a live chat survives.

One channel server (callback customer, sandbox Omnidesk) runs in a loop of the
test's own, so hypothesis drives plain functions; each request goes over a raw
socket, so headers (Content-Length among them) are whatever was generated. The
runs are bounded: a few dozen examples per route family, no deadline.
"""

import asyncio
import json
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.channel.conftest import CallbackSetup, callback_setup  # noqa: E402

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
HOOKPOINTS = ["messageForCustomer", "uploadForCustomer", "typingIndicatorForCustomer", "endSession"]


class Running:
    """The server under fuzzing, in a loop of its own, and the chats it holds."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._context: Any = callback_setup(max_upload_bytes=4096)
        self.setup: CallbackSetup = self.loop.run_until_complete(self._context.__aenter__())
        # A chat the fuzzer has the token of (it may end it), and one it has not.
        self.victim = self.loop.run_until_complete(self.setup.hand_over("fuzz-victim"))
        self.live = self.loop.run_until_complete(self.setup.hand_over("fuzz-live"))
        self.victim_token = self.setup.server.settings.hookpoint_token(self.victim)
        self.customer_token = self.setup.customer_token("fuzz-victim")

    def request(self, raw: bytes) -> int:
        return self.loop.run_until_complete(_send(self.setup.server.url, raw))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self._context.__aexit__(None, None, None))
        finally:
            self.loop.close()

    def assert_live_chat_still_works(self) -> None:
        async def check() -> None:
            setup = self.setup
            result = await setup.server.sandbox.agent_reply(self.live, "still here?", name="Ann")
            assert (result.status, result.body) == (200, "ok")
            await setup.customer.wait_for(
                lambda r: [m for m in r if m.get("text") == "still here?"]
            )
            assert await setup.say("fuzz-live", "yes, still here") == 200
            assert setup.server.sandbox.chat(self.live).messages[-1].text == "yes, still here"

        self.loop.run_until_complete(check())


async def _send(url: str, raw: bytes) -> int:
    host, port = url.split("//", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    finally:
        writer.close()
    return int(head.split()[1])


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    server = Running()
    try:
        yield server
    finally:
        server.close()


# -- what a hostile client sends --------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "\udfff", "a\ud800b", "\x00", "", " ", "true", "1", "-1"]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = (
    st.sampled_from(
        [
            "sessionID",
            "SessionID",
            "sessionid",
            "message",
            "Typing",
            "name",
            "picture",
            "file",
            "sender",
            "event",
            "token",
        ]
    )
    | TEXT
)


def _json_body(draw: Any, known: Dict[str, str]) -> bytes:
    kind = draw(st.sampled_from(["object", "any", "deep", "broken"]))
    if kind == "deep":
        depth = draw(st.integers(30, 3000))
        return b"[" * depth + b"]" * draw(st.sampled_from([depth, 0]))
    if kind == "broken":
        return draw(st.binary(max_size=80))
    if kind == "any":
        value: Any = draw(JSON_VALUES)
    else:
        value = draw(
            st.dictionaries(
                FIELD_NAMES, JSON_VALUES | st.sampled_from(list(known.values())), max_size=6
            )
        )
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def _form_body(draw: Any, known: Dict[str, str]) -> Tuple[bytes, str]:
    fields = draw(
        st.lists(st.tuples(FIELD_NAMES, TEXT | st.sampled_from(list(known.values()))), max_size=6)
    )
    if draw(st.booleans()):
        from urllib.parse import quote

        pairs = [
            f"{quote(k.encode('utf-8', 'surrogatepass'))}={quote(v.encode('utf-8', 'surrogatepass'))}"
            for k, v in fields
        ]
        return "&".join(pairs).encode(), "application/x-www-form-urlencoded"
    boundary = "fuzzb"
    parts: List[bytes] = []
    for key, value in fields:
        disposition = draw(
            st.sampled_from(
                [
                    f'form-data; name="{key}"',
                    f'form-data; name="{key}"; filename="{value[:20]}"',
                    "form-data",
                    "form-data; name",
                ]
            )
        )
        header = f"Content-Disposition: {disposition}"
        if draw(st.booleans()):
            header += "\r\nContent-Type: " + draw(
                st.sampled_from(["image/png", "image/svg+xml", "text/plain; charset=zz", "x", ""])
            )
        if draw(st.booleans()):
            header = header.replace(": ", " ", 1)  # a header line without its colon
        parts.append(
            f"--{boundary}\r\n{header}\r\n\r\n".encode("utf-8", "surrogatepass")
            + value.encode("utf-8", "surrogatepass")
            + b"\r\n"
        )
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    return body, f"multipart/form-data; boundary={boundary}"


@st.composite
def requests(draw: Any, paths: Any, known: Dict[str, str]) -> bytes:
    path = draw(paths)
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
    kind = draw(st.sampled_from(["json", "form", "binary", "none"]))
    content_type: Optional[str]
    if kind == "json":
        body = _json_body(draw, known)
        content_type = draw(
            st.sampled_from(["application/json", "application/json; charset=utf-8"])
        )
    elif kind == "form":
        body, content_type = _form_body(draw, known)
    elif kind == "binary":
        body = draw(st.binary(max_size=200))
        content_type = draw(
            st.sampled_from([None, "text/plain", "application/octet-stream", "multipart/form-data"])
        )
    else:
        body, content_type = b"", None
    length = draw(
        st.sampled_from([str(len(body))] * 6 + ["-1", "abc", "", "+1", str(len(body)) + " "])
    )
    query = draw(st.sampled_from(["", "?sessionID=" + known["victim"], "?a=%ED%A0%80", "?x"]))
    lines = [f"{method} {path}{query} HTTP/1.1", "Host: fuzz", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if kind != "none" or draw(st.booleans()):
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


def _hook_paths(running: Running) -> Any:
    tokens = st.sampled_from(
        [running.victim_token, "0" * 40, "secret", running.victim_token.upper()]
    )
    names = st.sampled_from(HOOKPOINTS) | st.sampled_from(["messageForCustomer/", "x", ""])
    return st.builds(lambda t, n: f"/webhooks/omnidesk/hook/{t}/{n}", tokens, names)


def _known(running: Running) -> Dict[str, str]:
    return {
        "victim": running.victim,
        "live": running.live,
        "sender": "fuzz-victim",
        "token": running.customer_token,
    }


def test_fuzzed_hookpoint_calls_never_answer_5xx(running: Running) -> None:
    @FUZZ
    @given(raw=requests(_hook_paths(running), _known(running)))
    def hookpoint(raw: bytes) -> None:
        status = running.request(raw)
        assert status < 500, raw[:300]

    hookpoint()
    running.assert_live_chat_still_works()


def test_fuzzed_customer_route_calls_never_answer_5xx(running: Running) -> None:
    paths = st.sampled_from(
        [
            "/webhooks/omnidesk/upload",
            "/webhooks/omnidesk/event",
            "/webhooks/omnidesk/upload/",
            "/webhooks/omnidesk/",
            "/webhooks/omnidesk/files/abc/def",
            "/webhooks/omnidesk/files/" + "A" * 43 + "/x.png",
        ]
    )

    @FUZZ
    @given(raw=requests(paths, _known(running)))
    def customer_route(raw: bytes) -> None:
        status = running.request(raw)
        assert status < 500, raw[:300]

    customer_route()
    running.assert_live_chat_still_works()


def test_fuzzed_socketio_customer_events_are_answered_and_the_chat_goes_on() -> None:
    from tests.channel.test_socketio_relay import persistent_widget_with_agent

    loop = asyncio.new_event_loop()
    context: Any = persistent_widget_with_agent("fuzz-socket-session")
    server, widget, chat = loop.run_until_complete(context.__aenter__())
    try:
        payloads = JSON_VALUES | st.fixed_dictionaries(
            {},
            optional={
                "event": st.sampled_from(["startedtyping", "stoppedtyping", "expandedchat"]) | TEXT,
                "session_id": st.sampled_from(["fuzz-socket-session", "someone-else"]) | TEXT,
            },
        )

        @FUZZ
        @given(payload=payloads)
        def customer_event(payload: Any) -> None:
            answer = loop.run_until_complete(
                widget.client.call("customer_event", payload, timeout=5)
            )
            assert isinstance(answer, dict) and answer.get("status") in {"ok", "error"}

        customer_event()

        async def still_works() -> None:
            result = await server.sandbox.agent_reply(chat, "after the fuzz")
            assert result.body == "ok"
            await widget.wait_for(lambda: "after the fuzz" in widget.texts())

        loop.run_until_complete(still_works())
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()
