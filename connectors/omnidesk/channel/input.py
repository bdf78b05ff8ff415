"""OmnideskInput: the channel a Rasa developer names in credentials.yml.

It wraps the customer's own channels (socketio, callback, or any channel that
can send outside a request), serves their routes at their usual URLs, and adds
the Omnidesk hookpoints and the customer's upload and event routes under
/webhooks/omnidesk. It only routes: relay.py decides, rasa_bot.py talks to
Rasa, customer.py reaches the customer. docs/channel.md is its reference.
"""

import asyncio
import contextlib
import hmac
import inspect
import logging
import os
import re
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urljoin

import rasa.shared.utils.common
from rasa.core.channels import BUILTIN_CHANNELS
from rasa.core.channels.channel import (
    CollectingOutputChannel,
    InputChannel,
    UserMessage,
)
from rasa.core.channels.socketio import SocketIOInput
from sanic import Blueprint, response
from sanic.exceptions import PayloadTooLarge
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.omnidesk import rules
from connectors.omnidesk.channel import rasa_versions
from connectors.omnidesk.channel.customer import WrappedOutput, line_for
from connectors.omnidesk.channel.files import AgentFileStore, FileTooLarge
from connectors.omnidesk.channel.hookpoints import (
    HookpointFields,
    HookpointInputError,
    UploadedFile,
    fields_from,
    parse_end,
    parse_message,
    parse_typing,
    parse_upload,
)
from connectors.omnidesk.channel.rasa_bot import RasaBot
from connectors.omnidesk.channel.relay import NotInRelay, Relay
from connectors.omnidesk.channel.switchboard import SwitchboardError, create_switchboard
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.handoff import HandoffStarted
from connectors.omnidesk.settings import OmnideskSettings, SettingsError

logger = logging.getLogger(__name__)

CHANNEL_NAME = "omnidesk"
CUSTOMER_EVENT = "customer_event"
HOOKPOINT_ANSWER_BUDGET = 0.5  # seconds a hookpoint waits to see its delivery through
SMALL_BODY_BYTES = 64 * 1024
MESSAGE_BODY_BYTES = 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024
HOOKPOINT_NAMES = (
    "messageForCustomer",
    "uploadForCustomer",
    "typingIndicatorForCustomer",
    "endSession",
)

Handler = Callable[[UserMessage], Awaitable[Any]]


class ChannelConfigError(ValueError):
    """credentials.yml's entry for the Omnidesk channel is wrong; says which key and why."""


# -- keeping the secret out of logs -----------------------------------------------

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


def install_secret_filter() -> None:
    for name in ("sanic.access", "sanic.error", "sanic.root"):
        target = logging.getLogger(name)
        if _SECRET_FILTER not in target.filters:
            target.addFilter(_SECRET_FILTER)


# -- building the wrapped channels -----------------------------------------------


def _build_customer_channel(key: Any, credentials: Any) -> InputChannel:
    if not isinstance(key, str) or not key:
        raise ChannelConfigError(
            f"customer_channels: {key!r} is not a channel name; use a built-in name such as "
            "socketio or callback, or a module path to an InputChannel class"
        )
    if credentials is not None and not isinstance(credentials, Mapping):
        raise ChannelConfigError(
            f"customer_channels.{key}: must be a mapping of that channel's credentials, "
            f"got {type(credentials).__name__}"
        )
    if key == CHANNEL_NAME or key.endswith(".OmnideskInput"):
        raise ChannelConfigError(
            f"customer_channels.{key}: the Omnidesk channel cannot wrap itself"
        )
    if key in BUILTIN_CHANNELS:
        channel_class: Any = BUILTIN_CHANNELS[key]
    else:
        try:
            channel_class = rasa.shared.utils.common.class_from_module_path(key)
        except (AttributeError, ImportError, ValueError) as error:
            raise ChannelConfigError(
                f"customer_channels.{key}: not a built-in channel ({', '.join(sorted(BUILTIN_CHANNELS))}) "
                f"and not an importable InputChannel class ({error})"
            ) from error
        if not (isinstance(channel_class, type) and issubclass(channel_class, InputChannel)):
            raise ChannelConfigError(f"customer_channels.{key}: is not an InputChannel class")
    try:
        channel: InputChannel = channel_class.from_credentials(
            dict(credentials) if credentials else None
        )
    except Exception as error:
        raise ChannelConfigError(
            f"customer_channels.{key}: the channel rejected its credentials: "
            f"{type(error).__name__}: {error}"
        ) from error
    return channel


def _can_push(channel: InputChannel) -> bool:
    """Whether ``channel`` can send a message outside the request that brought a turn."""
    if isinstance(channel, SocketIOInput):
        # Its output channel exists once its blueprint has been built.
        return True
    output = channel.get_output_channel()
    if output is None:
        return False
    return not (
        type(output) is CollectingOutputChannel
        or type(output)._persist_message is CollectingOutputChannel._persist_message
    )


class _WrappedChannelEntry(InputChannel):  # type: ignore[misc]
    """Stands for a wrapped channel in app.ctx.input_channels.

    Rasa's HTTP API (``?output_channel=latest``) looks a conversation's output
    channel up by the latest input channel's name; the wrapped channel is not
    registered by itself, so this entry answers for it, with the control
    payload still caught.
    """

    def __init__(self, wrapped: InputChannel, owner: "OmnideskInput") -> None:
        self._wrapped = wrapped
        self._owner = owner

    def name(self) -> str:
        return str(self._wrapped.name())

    def url_prefix(self) -> str:
        return str(self._wrapped.url_prefix())

    def get_output_channel(self) -> Optional[Any]:
        return self._owner.output_for(self.name())

    def blueprint(self, on_new_message: Handler) -> Blueprint:
        raise RuntimeError("registered through OmnideskInput")


class _OmnideskBlueprint(Blueprint):
    """Registers the wrapped channels' blueprints at their own usual prefixes.

    Rasa registers OmnideskInput's blueprint with url_prefix /webhooks/omnidesk;
    a wrapped channel's routes belong at /webhooks/<its prefix>, so they are
    registered here beside it, not below it.
    """

    def __init__(
        self, owner: "OmnideskInput", wrapped: List[Tuple[InputChannel, Blueprint]]
    ) -> None:
        super().__init__("omnidesk_webhook", url_prefix=None)
        self.ctx.owner = owner
        self.ctx.wrapped = wrapped

    def register(self, app: Any, options: Dict[str, Any]) -> None:
        owner: OmnideskInput = self.ctx.owner
        prefix = options.get("url_prefix")
        base: Optional[str] = None
        if prefix:
            stripped = str(prefix).rstrip("/")
            own = "/" + owner.url_prefix()
            base = stripped[: -len(own)] + "/" if stripped.endswith(own) else "/"
            owner.route_prefix = stripped
        else:
            owner.route_prefix = ""
        for channel, blueprint in self.ctx.wrapped:
            wrapped_prefix = urljoin(base, channel.url_prefix()) if base is not None else None
            app.blueprint(blueprint, url_prefix=wrapped_prefix)
        register: Any = super().register
        register(app, options)


class OmnideskInput(InputChannel):  # type: ignore[misc]
    """Hands a conversation to a live agent in Omnidesk, on the customer's own channel."""

    @classmethod
    def name(cls) -> str:
        return CHANNEL_NAME

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> "OmnideskInput":
        _keep_log_level()
        credentials = dict(credentials or {})
        customer = credentials.get("customer_channels")
        if not isinstance(customer, Mapping) or not customer:
            raise ChannelConfigError(
                "customer_channels: required, a mapping of at least one channel the customer "
                "talks on, e.g. customer_channels: {socketio: {user_message_evt: user_uttered, "
                "bot_message_evt: bot_uttered, session_persistence: true}}"
            )
        try:
            settings = OmnideskSettings.from_credentials(
                credentials, env=os.environ, ignore=("customer_channels",)
            )
        except SettingsError as error:
            raise ChannelConfigError(str(error)) from error
        channels = [_build_customer_channel(key, value) for key, value in customer.items()]
        return cls(settings, channels)

    def __init__(self, settings: OmnideskSettings, customer_channels: List[InputChannel]) -> None:
        if not customer_channels:
            raise ChannelConfigError("customer_channels: at least one channel is required")
        names = [str(channel.name()) for channel in customer_channels]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ChannelConfigError(
                f"customer_channels: more than one channel named {', '.join(duplicates)}"
            )
        refused = [str(c.name()) for c in customer_channels if not _can_push(c)]
        if refused:
            raise ChannelConfigError(
                f"customer_channels: {', '.join(refused)} cannot send a message outside the "
                "request that brought the customer's turn, so agent replies could not reach "
                "the customer. Use a channel that can push: socketio, callback, or one with "
                "its own get_output_channel (telegram, slack, facebook, twilio, ...)."
            )
        self.settings = settings
        self.customer_channels = list(customer_channels)
        self.route_prefix = "/webhooks/" + CHANNEL_NAME
        self.relay: Optional[Relay] = None
        self._lines: Dict[str, Any] = {}
        self._sweeper: Optional[asyncio.Task[None]] = None

    # -- outputs -----------------------------------------------------------------

    def _channel_named(self, name: str) -> Optional[InputChannel]:
        for channel in self.customer_channels:
            if channel.name() == name:
                return channel
        return None

    async def _on_handoff_started(
        self, conversation_id: str, channel: str, started: HandoffStarted
    ) -> None:
        if self.relay is None:
            logger.error(
                "Handoff of conversation %s arrived before the Omnidesk channel started; "
                "it stays with the bot.",
                conversation_id,
            )
            return
        await self.relay.start_handoff(conversation_id, channel, started)

    def wrap_output(self, output: Any, channel: str) -> WrappedOutput:
        return WrappedOutput(output, channel, self._on_handoff_started)

    def output_for(self, channel_name: str) -> Optional[Any]:
        """The wrapped channel's output channel, for a push outside a request."""
        channel = self._channel_named(channel_name)
        if channel is None:
            return None
        output = channel.get_output_channel()
        return None if output is None else self.wrap_output(output, channel_name)

    def get_output_channel(self) -> Optional[Any]:
        # Only one wrapped channel leaves no doubt which output is meant.
        if len(self.customer_channels) == 1:
            return self.output_for(str(self.customer_channels[0].name()))
        return None

    # -- the blueprint -------------------------------------------------------------

    def _relayed(self, channel: InputChannel, on_new_message: Handler) -> Handler:
        channel_name = str(channel.name())

        async def handle(message: UserMessage) -> Any:
            message.output_channel = self.wrap_output(message.output_channel, channel_name)
            relay = self.relay
            if relay is not None:
                handoff = await relay.switchboard.get(message.sender_id)
                if handoff is not None:
                    try:
                        await relay.customer_turn(handoff, message.text, self._lines[channel_name])
                        return None
                    except NotInRelay:
                        pass  # ended meanwhile: the bot answers this turn
            return await on_new_message(message)

        return handle

    def blueprint(self, on_new_message: Handler) -> Blueprint:
        install_secret_filter()
        wrapped: List[Tuple[InputChannel, Blueprint]] = []
        for channel in self.customer_channels:
            blueprint = channel.blueprint(self._relayed(channel, on_new_message))
            wrapped.append((channel, blueprint))
            self._lines[str(channel.name())] = line_for(channel, self.settings.agent_name_prefix)
            if (
                isinstance(channel, SocketIOInput)
                and rasa_versions.socketio_server(channel) is not None
            ):
                self._add_customer_event(channel)
                if not rasa_versions.session_request_awaits_room(channel):
                    _await_session_room(channel)

        bp = _OmnideskBlueprint(self, wrapped)
        # Sanic's decorators are untyped; registering through Any keeps the handlers typed.
        routes: Any = bp

        # (app, _loop=None): the listener form Sanic 21.12 and 25 both accept (rasa_versions).
        async def start(app: Any, _loop: Any = None) -> None:
            await self._start(app, on_new_message)

        async def stop(app: Any, _loop: Any = None) -> None:
            await self._stop()

        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        async def hook(request: Request, secret: str, hookpoint: str) -> HTTPResponse:
            return await self._hookpoint(request, secret, hookpoint)

        async def upload(request: Request) -> HTTPResponse:
            return await self._customer_upload(request)

        async def event(request: Request) -> HTTPResponse:
            return await self._customer_event_route(request)

        async def files(_: Request, token: str, filename: str) -> HTTPResponse:
            return await self._serve_file(token, filename)

        routes.listener("before_server_start")(start)
        routes.listener("after_server_stop")(stop)
        routes.add_route(health, "/", methods=["GET"], name="omnidesk_health")
        routes.add_route(
            hook,
            "/hook/<secret:str>/<hookpoint:str>",
            methods=["POST"],
            stream=True,
            name="omnidesk_hook",
        )
        routes.add_route(upload, "/upload", methods=["POST"], stream=True, name="omnidesk_upload")
        routes.add_route(event, "/event", methods=["POST"], stream=True, name="omnidesk_event")
        routes.add_route(
            files, "/files/<token:str>/<filename:str>", methods=["GET"], name="omnidesk_files"
        )
        return bp

    def _add_customer_event(self, channel: SocketIOInput) -> None:
        sio = rasa_versions.socketio_server(channel)
        persistence = bool(channel.session_persistence)

        async def customer_event(sid: str, data: Any) -> Dict[str, str]:
            if not isinstance(data, Mapping):
                return _error_body("data", "must be an object with 'event'")
            sender = data.get("session_id") if persistence else sid
            if not isinstance(sender, str) or not sender:
                return _error_body("session_id", "required (session_persistence is on)")
            _status, body = await self._relay_customer_event(sender, data.get("event"))
            return body

        sio.on(CUSTOMER_EVENT, namespace=channel.namespace)(customer_event)

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self, app: Any, on_new_message: Handler) -> None:
        install_secret_filter()
        switchboard = create_switchboard(self.settings.switchboard_url)
        client = OmnideskClient(self.settings)
        files_dir = str(self.settings.files_dir) if self.settings.files_dir else None
        files = AgentFileStore(
            files_dir,
            self.settings.max_upload_bytes,
            f"{self.settings.public_url}{self.route_prefix}/files",
        )
        bot = RasaBot(app, on_new_message, self.output_for)
        self.relay = Relay(self.settings, switchboard, client, self._lines, bot, files)
        existing = list(getattr(app.ctx, "input_channels", None) or [])
        known = {str(c.name()) for c in existing}
        for channel in self.customer_channels:
            if str(channel.name()) not in known:
                existing.append(_WrappedChannelEntry(channel, self))
        app.ctx.input_channels = existing
        shortest = min(
            self.settings.inactivity_timeout,
            self.settings.record_interval,
            self.settings.agent_wait_notice or self.settings.inactivity_timeout,
        )
        interval = max(0.05, min(5.0, shortest / 4))
        self._sweeper = asyncio.ensure_future(self.relay.run_sweeper(interval))
        logger.info(
            "Omnidesk channel started: wrapping %s; hookpoints at %s; switchboard %s.",
            ", ".join(str(c.name()) for c in self.customer_channels),
            self.settings.chat_server_for_logs,
            self.settings.switchboard_url_for_logs,
        )

    async def _stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        relay = self.relay
        if relay is None:
            return
        self.relay = None
        try:
            await relay.close()
        finally:
            await relay.client.close()
            await relay.switchboard.close()
            relay.files.close()

    # -- routes ----------------------------------------------------------------------

    async def _read_body(self, request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HookpointInputError("body", f"larger than {limit} bytes", status=413)
        stream: Any = request.stream
        if stream is not None:
            stream.request_max_size = limit
        receive: Any = request.receive_body
        try:
            await receive()
        except PayloadTooLarge as error:
            raise HookpointInputError("body", f"larger than {limit} bytes", status=413) from error
        return bytes(request.body or b"")

    async def _fields(self, request: Request, limit: int) -> HookpointFields:
        body = await self._read_body(request, limit)
        kind = (request.content_type or "").split(";", 1)[0].strip().lower()
        form: Optional[Mapping[str, Any]] = None
        files: Optional[Mapping[str, Any]] = None
        if kind in {"multipart/form-data", "application/x-www-form-urlencoded"}:
            form = request.form
            files = request.files
        return fields_from(
            content_type=request.content_type or "",
            body=body,
            query_string=request.query_string or "",
            form=form,
            files=files,
        )

    async def _hookpoint(self, request: Request, secret: str, hookpoint: str) -> HTTPResponse:
        expected = self.settings.hookpoint_secret.reveal()
        if not hmac.compare_digest(secret.encode("utf-8"), expected.encode("utf-8")):
            logger.warning("Hookpoint call with a wrong secret refused (404).")
            return _error(404, "not found")
        if hookpoint not in HOOKPOINT_NAMES:
            return _error(404, f"no hookpoint {hookpoint[:40]!r}")
        relay = self.relay
        if relay is None:
            return _error(503, "the Omnidesk channel is starting; try again")
        try:
            if hookpoint == "uploadForCustomer":
                limit = self.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            elif hookpoint == "messageForCustomer":
                limit = MESSAGE_BODY_BYTES
            else:
                limit = SMALL_BODY_BYTES
            fields = await self._fields(request, limit)
            delivery: Optional[asyncio.Future[bool]] = None
            if hookpoint == "messageForCustomer":
                delivery = await relay.agent_message(parse_message(fields))
            elif hookpoint == "uploadForCustomer":
                upload = parse_upload(fields)
                if len(upload.file.content) > self.settings.max_upload_bytes:
                    raise HookpointInputError(
                        "file", f"larger than {self.settings.max_upload_bytes} bytes", status=413
                    )
                delivery = await relay.agent_upload(upload)
            elif hookpoint == "typingIndicatorForCustomer":
                await relay.agent_typing(parse_typing(fields))
            else:
                await relay.agent_end(parse_end(fields))
        except HookpointInputError as error:
            logger.info("Hookpoint %s refused (%d): %s", hookpoint, error.status, error)
            return _error(error.status, str(error))
        except NotInRelay as error:
            logger.info(
                "Hookpoint %s for chat %s refused: not with an agent now (404).",
                hookpoint,
                error.args[0] if error.args else "?",
            )
            return _error(404, "sessionID: no open chat with this session id")
        except FileTooLarge as error:
            return _error(413, str(error))
        except SwitchboardError as error:
            logger.error("Hookpoint %s failed: %s", hookpoint, error)
            return _error(503, "the switchboard is unavailable; try again")
        if delivery is not None and not await _delivered_in_time(delivery):
            return _error(
                502, "the customer's channel did not take the message; it was not delivered"
            )
        return response.text("ok")

    async def _customer_upload(self, request: Request) -> HTTPResponse:
        relay = self.relay
        if relay is None:
            return _error(503, "the Omnidesk channel is starting; try again")
        try:
            fields = await self._fields(
                request, self.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            )
            sender = fields.text("sender")
            if not sender:
                raise HookpointInputError("sender", "required (the conversation id)")
            upload: Optional[UploadedFile] = fields.files.get("file")
            if upload is None or not upload.content:
                raise HookpointInputError("file", "required (a multipart file field named 'file')")
            if len(upload.content) > self.settings.max_upload_bytes:
                raise HookpointInputError(
                    "file", f"larger than {self.settings.max_upload_bytes} bytes", status=413
                )
            if not self.settings.accepts_upload_type(upload.content_type):
                raise HookpointInputError(
                    "file",
                    f"type {upload.content_type[:80]} not allowed; allowed: "
                    f"{', '.join(self.settings.allowed_upload_types)}",
                    status=415,
                )
            await relay.customer_upload(sender, upload)
        except HookpointInputError as error:
            return _error(error.status, str(error))
        except NotInRelay:
            return _error(404, "sender: this conversation is not with an agent")
        except OmnideskError:
            return _error(502, "file: Omnidesk did not accept the file; the customer was told")
        except SwitchboardError as error:
            logger.error("Customer upload failed: %s", error)
            return _error(503, "the switchboard is unavailable; try again")
        return response.json({"status": "ok"})

    async def _customer_event_route(self, request: Request) -> HTTPResponse:
        try:
            fields = await self._fields(request, SMALL_BODY_BYTES)
        except HookpointInputError as error:
            return _error(error.status, str(error))
        sender = fields.text("sender")
        if not sender:
            return _error(400, "sender: required (the conversation id)")
        status, body = await self._relay_customer_event(sender, fields.text("event"))
        return response.json(body, status=status)

    async def _relay_customer_event(self, sender: str, event: Any) -> Tuple[int, Dict[str, str]]:
        relay = self.relay
        if relay is None:
            return 503, _error_body("channel", "the Omnidesk channel is starting; try again")
        try:
            rules.check_event(event)
        except rules.FieldRuleError as error:
            return 400, _error_body("event", error.rule)
        try:
            await relay.customer_event(sender, str(event))
        except NotInRelay:
            return 404, _error_body("sender", "this conversation is not with an agent")
        except OmnideskError:
            return 502, _error_body("event", "Omnidesk did not accept the event")
        except SwitchboardError as error:
            logger.error("Customer event failed: %s", error)
            return 503, _error_body("switchboard", "unavailable; try again")
        return 200, {"status": "ok"}

    async def _serve_file(self, token: str, filename: str) -> HTTPResponse:
        relay = self.relay
        if relay is None:
            return _error(404, "not found")
        stored = await relay.files.lookup(token, filename)
        if stored is None:
            return _error(404, "not found")
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
            "Content-Security-Policy": "default-src 'none'",
        }
        if not stored.content_type.startswith("image/"):
            headers["Content-Disposition"] = f'attachment; filename="{stored.filename}"'
        return await response.file(stored.path, mime_type=stored.content_type, headers=headers)


def _error_body(field: str, problem: str) -> Dict[str, str]:
    return {"status": "error", "message": f"{field}: {problem}"}


def _error(status: int, message: str) -> HTTPResponse:
    return response.json({"status": "error", "message": message}, status=status)


def _keep_log_level() -> None:
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


async def _delivered_in_time(delivery: "asyncio.Future[bool]") -> bool:
    """False only when delivery failed within the hookpoint's answer budget.

    Omnidesk wants a hookpoint answer within about a second. A delivery still
    under way by then is answered ``ok`` and goes on in the background (a
    failure is then logged); one that has already failed is answered 502, so
    the agent's side hears of it instead of a false ``ok``.
    """
    done, _ = await asyncio.wait({delivery}, timeout=HOOKPOINT_ANSWER_BUDGET)
    return not done or delivery.result()


def _await_session_room(channel: SocketIOInput) -> None:
    """Replace Rasa's socket.io ``session_request`` handler with one that awaits ``enter_room``.

    Rasa 3.6 calls ``sio.enter_room(...)`` without ``await``. From python-socketio
    5.9 on, ``AsyncServer.enter_room`` is a coroutine, so with
    ``session_persistence: true`` the socket never joins its session's room and
    no bot or agent message reaches the widget. The handler below is Rasa's,
    with the room entered for real on either version.
    """
    sio = rasa_versions.socketio_server(channel)
    persistence = bool(channel.session_persistence)

    async def session_request(sid: str, data: Optional[Dict[str, Any]]) -> None:
        data = dict(data) if isinstance(data, Mapping) else {}
        if not data.get("session_id"):
            data["session_id"] = uuid.uuid4().hex
        if persistence:
            entered = sio.enter_room(sid, data["session_id"], namespace=channel.namespace)
            if inspect.isawaitable(entered):
                await entered
        await sio.emit("session_confirm", data["session_id"], room=sid, namespace=channel.namespace)
        logger.debug("socket.io client %s joined its session", sid)

    sio.on("session_request", namespace=channel.namespace)(session_request)
