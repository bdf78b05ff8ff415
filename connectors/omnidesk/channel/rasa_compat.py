"""Where Rasa and Sanic differ or misbehave, bridged in one place.

The connector runs on Rasa Open Source 3.6.21 (Sanic 21.12, rasa-sdk 3.6) and
Rasa Pro 3.x (Sanic 22.12 to 25, rasa-sdk of the same number). The first half
of this module bridges where those lines differ, each shim saying which version
it is for and looking at what the installed Rasa has, never at its version
number, so the rest of the connector reads as if there were one Rasa. The
second half works around Rasa's and Sanic's traps, each with its reason and
version. Nothing here changes Rasa's files: each one wraps, replaces a
handler, or adds an entry where Rasa looks. docs/architecture.md ("Rasa
traps") tells the story.
"""

import inspect
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple, Type, TypeVar
from urllib.parse import urljoin

import sanic
from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from rasa.core.channels.socketio import SocketIOInput
from sanic import Blueprint

from connectors.omnidesk import handoff_events, tasks
from connectors.omnidesk.redis_connection import (
    RedisConnection,
    close_client,
    socketio_manager_options,
)

logger = logging.getLogger(__name__)

Handler = Callable[[UserMessage], Awaitable[Any]]
OutputFor = Callable[[str], Optional[OutputChannel]]
T = TypeVar("T")

# ==== Where Rasa Open Source 3.6 and Rasa Pro 3.x differ ============================

# -- socket.io ---------------------------------------------------------------------


def socketio_server(channel: Any) -> Any:
    """The socket.io ``AsyncServer`` of a ``SocketIOInput``; None before its blueprint is built.

    Rasa 3.6 and Rasa Pro up to 3.13 keep it in ``channel.sio``; Rasa Pro 3.14
    renamed the attribute to ``channel.sio_server``.
    """
    for attribute in ("sio_server", "sio"):
        server = getattr(channel, attribute, None)
        if server is not None:
            return server
    return None


# -- Sanic -------------------------------------------------------------------------

# Listeners are written ``async def listener(app, _loop=None)``: Sanic 21.12
# (Rasa 3.6) calls every listener with ``(app, loop)``; Sanic 22.9 on calls it
# with ``(app)`` first and only falls back to ``(app, loop)`` with a deprecation
# warning (Sanic 25; the fallback goes in 26.6). A loop argument with a default
# is the one form both accept without a warning.


# -- output channels ---------------------------------------------------------------


def pass_on_output_members(cls: Type[T]) -> Type[T]:
    """Give a wrapping output channel every public member of Rasa's ``OutputChannel``.

    For Rasa Pro 3.x, whose ``OutputChannel`` grew members Rasa 3.6's lacks:
    ``hangup``, the streaming calls (``supports_streaming``,
    ``send_response_chunk_start`` / ``_chunk`` / ``_end``), the response
    writer, the ``notify_message_processing_*`` calls and more. A wrapper that
    inherits them would answer them itself, as the plain base class, and the
    wrapped channel would never hear of them. Each member the installed
    ``OutputChannel`` has and ``cls`` does not define is passed on to
    ``self.inner``: methods are called on it, properties read from it. On
    Rasa 3.6 the wrapper defines every public member already, so nothing is added.
    """
    seen = set(vars(cls))
    for klass in OutputChannel.__mro__:
        if klass is object:
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(member, property):
                setattr(cls, name, property(_read_from_inner(name)))
            elif callable(member) and not isinstance(member, (classmethod, staticmethod)):
                setattr(cls, name, _call_on_inner(name))
    return cls


def _read_from_inner(name: str) -> Callable[[Any], Any]:
    def read(self: Any) -> Any:
        return getattr(self.inner, name)

    read.__name__ = name
    return read


def _call_on_inner(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    call.__name__ = name
    return call


def output_channel_for(channel: InputChannel, conversation_id: str) -> Optional[OutputChannel]:
    """The output channel ``channel`` gives for a push to one conversation.

    Rasa Pro 3.19 added ``InputChannel.get_output_channel_for_conversation``: a
    channel may answer per conversation (or None when it cannot reach that one
    from here). Before it, and on Rasa 3.6, every conversation gets
    ``get_output_channel()``.
    """
    per_conversation = getattr(channel, "get_output_channel_for_conversation", None)
    if callable(per_conversation):
        output: Optional[OutputChannel] = per_conversation(conversation_id)
        return output
    return channel.get_output_channel()


def telegram_bot(output: Any) -> Any:
    """The aiogram ``Bot`` of Rasa's ``TelegramOutput``.

    Rasa 3.6 (aiogram 2) makes ``TelegramOutput`` a ``Bot`` itself; Rasa Pro
    3.13 and later (aiogram 3) give it one as ``output.bot``.
    """
    bot = getattr(output, "bot", None)
    return output if bot is None else bot


async def close_telegram_output(output: Any) -> None:
    """Close the HTTP session of a ``TelegramOutput``'s bot (aiogram 2 and 3 alike)."""
    session = getattr(telegram_bot(output), "session", None)
    close = getattr(session, "close", None)
    if close is not None:
        closed = close()
        if inspect.isawaitable(closed):
            await closed


def attach_tracker_state(wrapper: Any, inner: Any, tracker: Any) -> None:
    """Rasa Pro 3.x: hand the tracker to the wrapped output, and show its state on the wrapper.

    Pro calls ``attach_tracker_state`` on the output channel of every turn; the
    wrapped output reads its own ``tracker_state`` (socket.io's silence timeout,
    for one) and Rasa reads the wrapper's. The state is computed once, by the
    wrapped output. Rasa 3.6 never calls it.
    """
    attach = getattr(inner, "attach_tracker_state", None)
    if callable(attach):
        attach(tracker)
    wrapper._tracker = tracker
    wrapper.tracker_state = getattr(inner, "tracker_state", None)


# -- stores and YAML ---------------------------------------------------------------


def in_memory_tracker_store(domain: Any) -> Any:
    """Rasa's ``InMemoryTrackerStore`` for ``domain``.

    Rasa 3.6: ``rasa.core.tracker_store``; Rasa Pro 3.x:
    ``rasa.core.tracker_stores.tracker_store``.
    """
    try:
        from rasa.core.tracker_stores.tracker_store import InMemoryTrackerStore
    except ImportError:
        from rasa.core.tracker_store import InMemoryTrackerStore
    return InMemoryTrackerStore(domain)


def read_yaml(content: str) -> Any:
    """Rasa's own YAML reading, with its ``${VAR}`` expansion.

    Rasa 3.6: ``rasa.shared.utils.io.read_yaml``; Rasa Pro 3.x:
    ``rasa.shared.utils.yaml.read_yaml``.
    """
    try:
        from rasa.shared.utils.yaml import read_yaml as read
    except ImportError:
        from rasa.shared.utils.io import read_yaml as read
    return read(content)


# -- rasa_sdk ----------------------------------------------------------------------


def action_result(result: Any) -> Optional[Dict[str, Any]]:
    """What ``ActionExecutor.run`` returned, as the JSON body the action server answers.

    rasa-sdk 3.6 returns that dict; rasa-sdk of Rasa Pro 3.x returns an
    ``ActionExecutorRunResult`` (pydantic), which the server dumps.
    """
    if result is None:
        return None
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        return dict(dump())
    return dict(result)


# ==== Rasa's and Sanic's traps ==================================================

# -- keeping the secret out of Sanic's logs (any Sanic) ------------------------------

_HOOK_PATH = re.compile(r"(/hook/)[^/\s?\"']+")


class HookpointSecretFilter(logging.Filter):
    """Masks the secret path segment of hookpoint URLs in Sanic's access and error logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if isinstance(request, str):
            record.request = _HOOK_PATH.sub(r"\1***", request)
        if isinstance(record.msg, str):
            record.msg = _HOOK_PATH.sub(r"\1***", record.msg)
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                _HOOK_PATH.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


_SECRET_FILTER = HookpointSecretFilter()


class FormErrorFilter(logging.Filter):
    """Sanic's "Failed when parsing form" as one line, without the traceback.

    Sanic (21.12 and later) logs a malformed form body with ``logger.exception``:
    a full traceback for a request the route then refuses with a 400. A client
    can send as many as it likes; the log would page someone for nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Failed when parsing form" and record.exc_info:
            error = record.exc_info[1]
            record.msg = "Refused a malformed form body: %s: %s"
            record.args = (type(error).__name__, str(error)[:200])
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None
            record.exc_text = None
        return True


_FORM_ERROR_FILTER = FormErrorFilter()


def install_secret_filter() -> None:
    """Sanic's loggers and the handoff steps' structured lines go through the secret filter."""
    for name in ("sanic.access", "sanic.error", "sanic.root", handoff_events.LOGGER_NAME):
        target = logging.getLogger(name)
        if _SECRET_FILTER not in target.filters:
            target.addFilter(_SECRET_FILTER)
    error_logger = logging.getLogger("sanic.error")
    if _FORM_ERROR_FILTER not in error_logger.filters:
        error_logger.addFilter(_FORM_ERROR_FILTER)


# -- Content-Length (Sanic 21.12, Rasa 3.6's pin) -------------------------------------


def _sanic_major() -> int:
    try:
        return int(str(getattr(sanic, "__version__", "0")).split(".", 1)[0])
    except ValueError:
        return 0


def guard_content_length(blueprint: Blueprint) -> None:
    """Refuse a Content-Length that is not a whole number, before Sanic 21 reads it.

    Sanic 21.12 turns ``Content-Length: abc`` into a 500 and, worse,
    ``Content-Length: -1`` into a read loop that holds the whole process at
    full CPU. Its ``http.lifecycle.request`` signal runs after the head is
    parsed and before the length is; raising there answers 400. The signal
    fires for every route of the app, Rasa's own included. Sanic 22 and later
    refuse such lengths themselves, so the guard is for Sanic 21 only. It does
    not replace the proxy docs/security.md asks for.
    """
    if _sanic_major() >= 22:
        return
    from sanic.exceptions import InvalidUsage  # Sanic 21's name for a 400

    async def check(request: Any) -> None:
        value = request.headers.get("content-length")
        if value is not None and not (value.isascii() and value.strip().isdigit()):
            logger.info("Refused a request with Content-Length %r (400).", value[:20])
            raise InvalidUsage("Bad content-length")

    signals: Any = blueprint
    signals.signal("http.lifecycle.request")(check)


# -- the log level (Rasa 3.6 with scikit-learn pipelines) ----------------------------


def keep_log_level() -> None:
    """Pin the connector's log level to the one Rasa was started with.

    Loading a model whose pipeline uses scikit-learn (LogisticRegressionClassifier,
    for one) imports numpy.distutils, which, through setuptools' distutils shim,
    sets the root logger to WARNING. Every INFO line after the model loaded would
    vanish, the connector's one line per handoff event among them. Rasa configures
    logging before it builds the channels, so the level seen here is the user's.
    """
    ours = logging.getLogger("connectors.omnidesk")
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.getLogger().getEffectiveLevel())


# -- socket.io across instances (Rasa 3.6 builds its AsyncServer without a manager) ----


def share_sockets_through_redis(channel: SocketIOInput, connection: RedisConnection) -> Any:
    """Give the wrapped socket.io server python-socketio's own ``AsyncRedisManager``.

    Rasa 3.6 builds ``AsyncServer(async_mode="sanic", cors_allowed_origins=[])``
    inside ``SocketIOInput.blueprint()`` with the default, per-process client
    manager: an emit reaches only the sockets of the process that makes it. With
    several instances the agent's message is emitted wherever the hookpoint
    call landed, so the manager is swapped for one that carries each emit
    through Redis pub/sub to whichever instance holds the socket. It must be
    done before any socket connects (the blueprint is built before the server
    starts). Returns the manager, so the channel can stop its listener.

    The manager follows the connection's mode (redis_connection's
    ``socketio_manager_options``): one server, the master the sentinels name, or
    one node of a Cluster at a time (classic pub/sub reaches every node).
    """
    import socketio

    sio = socketio_server(channel)
    options = socketio_manager_options(connection)
    manager = socketio.AsyncRedisManager(
        options.url, channel="omnidesk-socketio", redis_options=options.manager_options()
    )
    manager.set_server(sio)
    sio.manager = manager
    return manager


async def stop_shared_sockets(manager: Any) -> None:
    """Stop the manager's pub/sub listener and close its Redis connection."""
    await tasks.stop(getattr(manager, "thread", None), grace=2.0)
    redis = getattr(manager, "redis", None)
    if redis is not None:
        await close_client(redis)


# -- socket.io rooms (Rasa 3.6 with python-socketio >= 5.9) ---------------------------

SocketJoined = Callable[[str, str], Awaitable[None]]  # (recipient id, socket id)
SocketLeft = Callable[[str], Awaitable[None]]  # (socket id)


def await_session_room(
    channel: SocketIOInput,
    on_joined: Optional[SocketJoined] = None,
    on_left: Optional[SocketLeft] = None,
) -> None:
    """Replace Rasa's socket.io ``session_request`` handler with one that awaits ``enter_room``.

    Rasa 3.6 calls ``sio.enter_room(...)`` without ``await``. From python-socketio
    5.9 on, ``AsyncServer.enter_room`` is a coroutine, so with
    ``session_persistence: true`` the socket never joins its session's room and
    no bot or agent message reaches the widget. The handler below is Rasa's,
    with the room entered for real on either version. Rasa Pro's own handler
    (``SocketIOInput.handle_session_request``) awaits the room but enters it in
    the default namespace; it is replaced there too, for the namespace and for
    the two hooks below.

    ``on_joined`` hears which conversation a socket now stands for (its session
    id with session_persistence, else its own sid, on connect) once it can be
    reached, and ``on_left`` hears a socket leave: the outbox keeps the
    session's presence from these. Rasa's connect and disconnect handlers still
    run first.
    """
    sio = socketio_server(channel)
    persistence = bool(channel.session_persistence)
    namespace = channel.namespace
    handlers = getattr(sio, "handlers", {}).get(namespace or "/", {})
    rasa_connect = handlers.get("connect")
    rasa_disconnect = handlers.get("disconnect")

    async def session_request(sid: str, data: Optional[Dict[str, Any]]) -> None:
        data = dict(data) if isinstance(data, Mapping) else {}
        if not data.get("session_id"):
            data["session_id"] = uuid.uuid4().hex
        if persistence:
            entered = sio.enter_room(sid, data["session_id"], namespace=namespace)
            if inspect.isawaitable(entered):
                await entered
            await _remember_session(sio, sid, str(data["session_id"]), namespace)
        await sio.emit("session_confirm", data["session_id"], room=sid, namespace=namespace)
        logger.debug("socket.io client %s joined its session", sid)
        if persistence and on_joined is not None:
            await on_joined(str(data["session_id"]), sid)

    sio.on("session_request", namespace=namespace)(session_request)

    if rasa_connect is not None and on_joined is not None and not persistence:

        async def connect(sid: str, environ: Any, auth: Any = None) -> Any:
            accepted = await rasa_connect(sid, environ, auth)
            if accepted is not False:
                await on_joined(sid, sid)
            return accepted

        sio.on("connect", namespace=namespace)(connect)

    if on_left is not None:

        async def disconnect(sid: str, *_reason: Any) -> None:
            if rasa_disconnect is not None:
                await rasa_disconnect(sid)
            await on_left(sid)

        sio.on("disconnect", namespace=namespace)(disconnect)


SOCKET_SESSION_KEY = "omnidesk_session_id"


async def _remember_session(sio: Any, sid: str, session_id: str, namespace: Optional[str]) -> None:
    """Keep the session this socket confirmed, so customer_event need not trust a payload."""
    try:
        async with sio.session(sid, namespace=namespace) as session:
            session[SOCKET_SESSION_KEY] = session_id
    except KeyError:
        logger.debug("socket.io client %s left before its session was stored", sid)


async def socket_session(sio: Any, sid: str, namespace: Optional[str]) -> Optional[str]:
    """The session id socket ``sid`` confirmed at session_request, or None."""
    try:
        session = await sio.get_session(sid, namespace=namespace)
    except KeyError:
        return None
    value = session.get(SOCKET_SESSION_KEY) if isinstance(session, dict) else None
    return value if isinstance(value, str) and value else None


# -- Telegram's webhook (Rasa 3.6 and Rasa Pro up to 3.11, aiogram 2) ------------------


@dataclass(frozen=True)
class Lifecycle:
    """What a repaired channel does when the server starts, and when it stops."""

    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


def is_rasa_channel(channel: Any, module: str, name: str) -> bool:
    """Whether ``channel`` is Rasa's ``module.name`` channel or a subclass of it.

    Read from the class's ancestry, so a channel whose client library is not
    installed need not be imported to ask.
    """
    return any(
        klass.__module__ == module and klass.__name__ == name for klass in type(channel).__mro__
    )


def keep_in_serving_loop(channel: InputChannel) -> Optional[Lifecycle]:
    """Repair a channel whose output channel is built in a loop that is gone; None if sound.

    Rasa 3.6's ``TelegramInput.get_output_channel()`` runs
    ``asyncio.run(set_webhook(...))`` (RasaHQ/rasa PR #13040, "Externally
    triggered intent fail with Telegram channel", never merged into 3.6). Its
    ``blueprint()`` calls it once, at start-up, outside any loop: the
    aiohttp session aiogram then opens belongs to that finished loop, so the
    webhook answers every update with 500 ("Event loop is closed" at
    ``get_me``), wrapped or not. Inside the serving loop (Rasa's HTTP API, an
    agent's reply) the call raises "asyncio.run() cannot be called from a
    running event loop". So the channel gets one ``TelegramOutput`` made here,
    without a call, as its output channel (an attribute of this instance; Rasa's
    class is unchanged): aiogram opens its session on the first call, in the
    serving loop. The webhook is set when the server has started, in that loop,
    as Rasa would have set it at start-up; the session is closed at stop.

    Rasa Pro 3.13 on (aiogram 3) builds the output without a call and sets no
    webhook on its own: nothing to repair. Known by what the installed Rasa has:
    the repaired ``TelegramOutput`` is an aiogram ``Bot`` itself; Pro's holds one.
    """
    if not is_rasa_channel(channel, "rasa.core.channels.telegram", "TelegramInput"):
        return None
    from rasa.core.channels.telegram import TelegramOutput

    if not any(klass.__module__.startswith("aiogram.") for klass in TelegramOutput.__mro__):
        return None
    output = TelegramOutput(channel.access_token)
    setattr(channel, "get_output_channel", lambda: output)  # noqa: B010 -- this instance only
    webhook_url = getattr(channel, "webhook_url", None)

    async def start() -> None:
        if not webhook_url:
            return
        try:
            await output.set_webhook(url=webhook_url)
        except Exception as error:  # aiogram's TelegramAPIError, or the network
            logger.error(
                "Telegram did not take the webhook %s (%s: %s): customers' messages may not "
                "arrive. Check customer_channels.telegram.access_token and webhook_url.",
                webhook_url,
                type(error).__name__,
                error,
            )
            return
        logger.info("Telegram webhook set to %s.", webhook_url)

    async def stop() -> None:
        await close_telegram_output(output)

    return Lifecycle(start, stop)


# -- Rasa's channel registry (rasa.server._get_output_channel) -------------------------


class WrappedChannelEntry(InputChannel):  # type: ignore[misc]
    """Stands for a wrapped channel in app.ctx.input_channels.

    Rasa's HTTP API (``?output_channel=latest``) looks a conversation's output
    channel up by the latest input channel's name; the wrapped channel is not
    registered by itself, so this entry answers for it, with the control
    payload still caught.
    """

    def __init__(self, wrapped: InputChannel, output_for: OutputFor) -> None:
        self._wrapped = wrapped
        self._output_for = output_for

    def name(self) -> str:
        return str(self._wrapped.name())

    def url_prefix(self) -> str:
        return str(self._wrapped.url_prefix())

    def get_output_channel(self) -> Optional[OutputChannel]:
        return self._output_for(self.name())

    def blueprint(self, on_new_message: Handler) -> Blueprint:
        raise RuntimeError("registered through OmnideskInput")


def register_wrapped_channels(
    app: Any, channels: List[InputChannel], output_for: OutputFor
) -> None:
    """Add an entry per wrapped channel to ``app.ctx.input_channels`` where none is."""
    existing = list(getattr(app.ctx, "input_channels", None) or [])
    known = {str(c.name()) for c in existing}
    for channel in channels:
        if str(channel.name()) not in known:
            existing.append(WrappedChannelEntry(channel, output_for))
    app.ctx.input_channels = existing


# -- the wrapped channels' usual URLs (Rasa registers one blueprint per channel) -------


class BesideBlueprint(Blueprint):
    """Registers the wrapped channels' blueprints at their own usual prefixes.

    Rasa registers OmnideskInput's blueprint with url_prefix /webhooks/omnidesk;
    a wrapped channel's routes belong at /webhooks/<its prefix>, so they are
    registered here beside it, not below it. A ``Blueprint.group`` would take
    one prefix for all its members. ``on_prefix`` hears the prefix Rasa gave.
    """

    def __init__(
        self,
        own_prefix: str,
        wrapped: List[Tuple[InputChannel, Blueprint]],
        on_prefix: Callable[[str], None],
    ) -> None:
        super().__init__("omnidesk_webhook", url_prefix=None)
        self.ctx.own_prefix = own_prefix
        self.ctx.wrapped = wrapped
        self.ctx.on_prefix = on_prefix

    def register(self, app: Any, options: Dict[str, Any]) -> None:
        prefix = options.get("url_prefix")
        base: Optional[str] = None
        if prefix:
            stripped = str(prefix).rstrip("/")
            own = "/" + self.ctx.own_prefix
            base = stripped[: -len(own)] + "/" if stripped.endswith(own) else "/"
            self.ctx.on_prefix(stripped)
        else:
            self.ctx.on_prefix("")
        for channel, blueprint in self.ctx.wrapped:
            wrapped_prefix = urljoin(base, channel.url_prefix()) if base is not None else None
            app.blueprint(blueprint, url_prefix=wrapped_prefix)
        register: Any = super().register
        register(app, options)
