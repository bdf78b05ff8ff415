"""The common part of every channel API fake: a small aiohttp app on loopback.

Each fake runs its own event loop in its own thread. Three of Rasa's output
channels (Messenger, Twilio, Bot Framework) send with blocking ``requests``
calls from inside async methods: a fake served by the test's own loop would
never get to answer them. From its thread a fake answers blocking and async
clients alike, in the same process or from a ``rasa run`` beside it.

A fake records every request as a ``Call`` (method, path, query, headers and the
body parsed as JSON, form or multipart), before it answers. A test reads
``fake.calls``, or awaits ``fake.wait_for(predicate)``; it programs refusals in
the service's own error shapes with ``fail_next(answer)`` (the next calls) or
``refuse(recipient, answer)`` (every call to one recipient until ``accept``).
"""

import asyncio
import concurrent.futures
import email.policy
import json
import socket
import threading
from dataclasses import dataclass, field, replace
from email.parser import BytesParser
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, TypeVar

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

Predicate = Callable[["Call"], bool]
FakeT = TypeVar("FakeT", bound="FakeApi")


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart body."""

    filename: Optional[str]
    content_type: Optional[str]
    data: bytes


@dataclass(frozen=True)
class Answer:
    """What the fake answers: a status, a JSON body (or text) and headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, headers=dict(self.headers))
        return web.json_response(self.body, status=self.status, headers=dict(self.headers))


@dataclass(frozen=True)
class Call:
    """One request the fake received, and the status it answered with."""

    method: str
    path: str
    query: MultiDictProxy[str]
    headers: CIMultiDictProxy[str]
    body: bytes
    json: Any
    form: MultiDictProxy[str]
    files: Mapping[str, Upload]
    # Set by the fake: the API method called (None when the fake does not know
    # the path) and whom the call is addressed to (chat, channel, phone number...).
    api_method: Optional[str] = None
    recipient: Optional[str] = None
    status: int = 0

    def param(self, name: str) -> Any:
        """A parameter from the JSON body, the form or the query, in that order."""
        if isinstance(self.json, dict) and name in self.json:
            return self.json[name]
        if name in self.form:
            return self.form[name]
        return self.query.get(name)

    def describe(self) -> str:
        return (
            f"{self.method} {self.path} ({self.api_method}, to {self.recipient}) -> {self.status}"
        )


@dataclass(frozen=True)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Call]"
    predicate: Predicate


@dataclass
class _Failure:
    answer: Answer
    api_method: Optional[str]


class FakeApi:
    """Base of the fakes: recording, waiting, programmed refusals, the thread it serves from."""

    name: ClassVar[str] = "fake API"

    def __init__(self) -> None:
        self.url = ""
        self.calls: List[Call] = []
        self._lock = threading.Lock()
        self._failures: List[_Failure] = []
        self._refusals: Dict[str, Answer] = {}
        self._waiters: List[_Waiter] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None

    # What each service does: which API method a request calls and to whom,
    # whether its credentials hold, and its answer when nothing is programmed.

    def identify(self, call: Call) -> Tuple[Optional[str], Optional[str]]:
        """(API method, recipient) of ``call``; API method None for a path the API lacks."""
        raise NotImplementedError

    def authorize(self, call: Call) -> Optional[Answer]:
        """The service's refusal of the call's credentials, or None when they hold."""
        return None

    def succeed(self, call: Call) -> Answer:
        """The service's answer to a call that goes through."""
        raise NotImplementedError

    def unknown(self, call: Call) -> Answer:
        """The service's answer to a path it does not have."""
        return Answer(404, {"error": "not found"})

    # Programming answers.

    def fail_next(self, answer: Answer, api_method: Optional[str] = None, times: int = 1) -> None:
        """Answer the next ``times`` calls (to ``api_method``, if given) with ``answer``."""
        with self._lock:
            self._failures.extend(_Failure(answer, api_method) for _ in range(times))

    def refuse(self, recipient: str, answer: Answer) -> None:
        """Answer every call addressed to ``recipient`` with ``answer``, until ``accept``."""
        with self._lock:
            self._refusals[str(recipient)] = answer

    def accept(self, recipient: str) -> None:
        with self._lock:
            self._refusals.pop(str(recipient), None)

    # Reading what arrived.

    def calls_to(self, api_method: str) -> List[Call]:
        with self._lock:
            return [call for call in self.calls if call.api_method == api_method]

    async def wait_for(self, predicate: Predicate, timeout: float = 10.0) -> Call:
        """The first call, received so far or later, for which ``predicate`` is true.

        The predicate runs in the caller's loop, so an error in it fails the test.
        """
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, loop.create_future(), predicate)
        with self._lock:
            already = list(self.calls)
            self._waiters.append(waiter)
        try:
            for call in already:
                self._offer(waiter, call)
            return await asyncio.wait_for(waiter.future, timeout)
        except asyncio.TimeoutError:
            seen = "; ".join(call.describe() for call in self.calls) or "none"
            raise AssertionError(
                f"{self.name}: no call matched within {timeout} s. Calls: {seen}"
            ) from None
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    @staticmethod
    def _offer(waiter: _Waiter, call: Call) -> None:
        if waiter.future.done():
            return
        try:
            if waiter.predicate(call):
                waiter.future.set_result(call)
        except Exception as error:  # the test's own predicate failed: show it to the test
            waiter.future.set_exception(error)

    # Serving.

    def start(self: FakeT) -> FakeT:
        """Serve on 127.0.0.1 on a free port, from a thread of its own; sets ``url``."""
        started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name=f"{self.name} fake", daemon=True
        )
        self._thread.start()
        self.url = started.result(timeout=30)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._loop = self._thread = None

    async def __aenter__(self: FakeT) -> FakeT:
        await asyncio.get_running_loop().run_in_executor(None, self.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def _serve(self, started: "concurrent.futures.Future[str]") -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            url = loop.run_until_complete(self._open())
            started.set_result(url)
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
        except BaseException as error:
            if not started.done():
                started.set_exception(error)
            raise
        finally:
            loop.close()

    async def _open(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        host, port = sock.getsockname()
        return f"http://{host}:{port}"

    async def _handle(self, request: web.Request) -> web.Response:
        call = await _read(request)
        api_method, recipient = self.identify(call)
        call = replace(call, api_method=api_method, recipient=recipient)
        answer = self._answer(call)
        call = replace(call, status=answer.status)
        with self._lock:
            self.calls.append(call)
            waiters = list(self._waiters)
        for waiter in waiters:
            if not waiter.loop.is_closed():
                waiter.loop.call_soon_threadsafe(self._offer, waiter, call)
        return answer.response()

    def _answer(self, call: Call) -> Answer:
        if call.api_method is None:
            return self.unknown(call)
        refused = self.authorize(call)
        if refused is not None:
            return refused
        with self._lock:
            for failure in self._failures:
                if failure.api_method in (None, call.api_method):
                    self._failures.remove(failure)
                    return failure.answer
            if call.recipient is not None and str(call.recipient) in self._refusals:
                return self._refusals[str(call.recipient)]
        return self.succeed(call)


async def _read(request: web.Request) -> Call:
    body = await request.read()
    parsed: Any = None
    form: MultiDict[str] = MultiDict()
    files: Dict[str, Upload] = {}
    if request.content_type == "application/json" and body:
        parsed = json.loads(body)
    elif request.content_type == "application/x-www-form-urlencoded":
        for key, value in (await request.post()).items():
            if isinstance(value, str):
                form.add(key, value)
    elif request.content_type == "multipart/form-data":
        for name, upload in _multipart_parts(request.headers["Content-Type"], body):
            if upload.filename is None:
                form.add(name, upload.data.decode("utf-8"))
            else:
                files[name] = upload
    return Call(
        method=request.method,
        path=request.path,
        query=MultiDictProxy(MultiDict(request.query)),
        headers=CIMultiDictProxy(CIMultiDict(request.headers)),
        body=body,
        json=parsed,
        form=MultiDictProxy(form),
        files=files,
    )


def _multipart_parts(content_type: str, body: bytes) -> List[Tuple[str, Upload]]:
    """The parts of a multipart/form-data body, by field name (the body is kept whole)."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts: List[Tuple[str, Upload]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        content = part.get("Content-Type")
        parts.append(
            (
                name,
                Upload(part.get_filename(), str(content) if content else None, bytes(data or b"")),
            )
        )
    return parts
