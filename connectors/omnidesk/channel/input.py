"""OmnideskInput: the channel a Rasa developer names in credentials.yml.

Rasa's face of the connector: ``from_credentials`` validates everything at
start-up, ``blueprint`` wraps the customer's own channels (socketio, callback,
or any channel that can send outside a request) and serves their routes at
their usual URLs beside the connector's own (routes.py), and the listeners
build and close the running parts. It routes a customer turn by asking the
relay once; relay.py decides. docs/channel.md is its reference.
"""

import asyncio
import contextlib
import ipaddress
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import rasa.shared.utils.common
from rasa.core.channels import BUILTIN_CHANNELS
from rasa.core.channels.channel import (
    CollectingOutputChannel,
    InputChannel,
    OutputChannel,
    UserMessage,
)
from rasa.core.channels.socketio import SocketIOInput
from sanic import Blueprint

from connectors.omnidesk.channel import rasa_compat, rasa_versions
from connectors.omnidesk.channel.customer import WrappedOutput, line_for, send_handoff_details
from connectors.omnidesk.channel.files import AgentFileStore
from connectors.omnidesk.channel.outbox import Outbox
from connectors.omnidesk.channel.outbox_store import create_outbox_store
from connectors.omnidesk.channel.presence import Presence
from connectors.omnidesk.channel.rasa_bot import RasaBot
from connectors.omnidesk.channel.rasa_compat import Handler
from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.routes import Routes
from connectors.omnidesk.channel.sides import CustomerLine
from connectors.omnidesk.channel.sweeper import Sweeper, interval_for
from connectors.omnidesk.channel.switchboard import SwitchboardError, create_switchboard
from connectors.omnidesk.client import OmnideskClient
from connectors.omnidesk.handoff import METADATA_KEY, METADATA_WITH_AGENT, HandoffStarted
from connectors.omnidesk.rules import valid_text
from connectors.omnidesk.settings import OmnideskSettings, SettingsError

logger = logging.getLogger(__name__)

CHANNEL_NAME = "omnidesk"
# How often a turn waiting for Rasa's lock looks again (Rasa's own default is 1 s).
LOCK_POLL_SECONDS = 0.05


class ChannelConfigError(ValueError):
    """credentials.yml's entry for the Omnidesk channel is wrong; says which key and why."""


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
        # Only CollectingOutputChannel and its subclasses have _persist_message;
        # telegram's or slack's output channel has none and can push.
        or getattr(type(output), "_persist_message", None)
        is CollectingOutputChannel._persist_message
    )


def _check_deployment(settings: OmnideskSettings, env: Mapping[str, str]) -> None:
    """Refuse settings that only work in one process when Rasa runs in several."""
    redis = not settings.switchboard_url.startswith("memory")
    workers = env.get("SANIC_WORKERS", "1").strip()
    if not redis and workers.isdigit() and int(workers) > 1:
        raise ChannelConfigError(
            f"switchboard_url: memory:// with SANIC_WORKERS={workers}: each worker would keep "
            "its own handoffs, and an agent's reply would reach a worker that does not know "
            "the chat. Set switchboard_url (OMNIDESK_SWITCHBOARD_URL) to redis://host:6379/0, "
            "or SANIC_WORKERS to 1."
        )
    if redis and settings.files_dir is None:
        raise ChannelConfigError(
            "files_dir: required with a Redis switchboard: agent files must be on storage "
            "every Rasa instance reads, or a link sent by one instance 404s on the others. "
            "Set files_dir (OMNIDESK_FILES_DIR) to a shared directory, e.g. "
            "/var/lib/rasa-omnidesk/files on a shared volume."
        )


def _warn_lock_store(app: Any, settings: OmnideskSettings) -> None:
    """A Redis switchboard means several instances; Rasa's lock store must be shared too."""
    if settings.switchboard_url.startswith("memory"):
        return
    agent = getattr(app.ctx, "agent", None)
    lock_store = getattr(agent, "lock_store", None)
    if type(lock_store).__name__ == "InMemoryLockStore":
        logger.warning(
            "The switchboard is Redis (several Rasa instances) but Rasa's lock store is in "
            "memory: two instances may run one conversation's turns at once. Set lock_store "
            "in endpoints.yml to type: redis (Rasa Pro: concurrent_redis); see "
            "docs/configuration.md, Several Rasa instances."
        )


def _valid(value: Any, depth: int = 0) -> Any:
    """``value`` with every string in it made valid Unicode (lone surrogates become U+FFFD)."""
    if isinstance(value, str):
        return valid_text(value)
    if depth > 20:
        return value
    if isinstance(value, dict):
        return {_valid(key, depth + 1): _valid(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_valid(item, depth + 1) for item in value]
    return value


def _repair_text(message: UserMessage) -> None:
    """Repair the turn's text and metadata before the tracker or the agent sees them.

    A customer's JSON may carry ``"\\ud800"``: valid JSON, but no UTF-8 string.
    Kept as is, it breaks the tracker store, the transcript and the multipart
    body of every later escalation; repaired here, it shows as U+FFFD.
    """
    if isinstance(message.text, str):
        message.text = valid_text(message.text)
    if isinstance(message.metadata, dict):
        message.metadata = _valid(message.metadata)


def _warn_if_plain_http(public_url: str) -> None:
    """Say so when the hookpoints' tokens would cross a network in clear text.

    A warning, not a refusal: http:// is right on loopback, in a private network
    behind a TLS proxy, and with the sandbox. docs/security.md says why.
    """
    parts = urlsplit(public_url)
    if parts.scheme != "http":
        return
    host = parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
        local = address.is_loopback or address.is_private
    except ValueError:
        local = host == "localhost" or host.endswith(".localhost")
    if not local:
        logger.warning(
            "OMNIDESK_PUBLIC_URL is http:// on a public host (%s): the hookpoint tokens in "
            "chatServer travel in clear text. Serve Rasa over https.",
            host,
        )


def _mark_with_bot(message: UserMessage) -> None:
    """Put the channel's own view of the handoff into the turn: this one goes to the bot.

    The action trusts it over the ``handoff_active`` slot, which can outlive a
    handoff (a failed end, a restart with memory://, lost Redis keys). A client's
    own ``omnidesk`` metadata is replaced, never trusted.
    """
    metadata = dict(message.metadata) if isinstance(message.metadata, dict) else {}
    metadata[METADATA_KEY] = {METADATA_WITH_AGENT: False}
    message.metadata = metadata


class OmnideskInput(InputChannel):  # type: ignore[misc]
    """Hands a conversation to a live agent in Omnidesk, on the customer's own channel."""

    @classmethod
    def name(cls) -> str:
        return CHANNEL_NAME

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> "OmnideskInput":
        rasa_compat.keep_log_level()
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
        _check_deployment(settings, os.environ)
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
        self.sweeper: Optional[Sweeper] = None
        self.routes = Routes(settings, lambda: self.relay)
        self._lines: Dict[str, CustomerLine] = {}
        self._sweeping: Optional[asyncio.Task[None]] = None
        # socket.io sessions connected here, kept where every instance sees them.
        self.presence = Presence()
        self._socket_managers: List[Any] = []
        self._app: Any = None

    # -- outputs -----------------------------------------------------------------

    def _channel_named(self, name: str) -> Optional[InputChannel]:
        for channel in self.customer_channels:
            if channel.name() == name:
                return channel
        return None

    async def _on_handoff_started(
        self, conversation_id: str, channel: str, started: HandoffStarted
    ) -> bool:
        """Register the handoff; False when it could not be (the chat was ended, the customer told)."""
        if self.relay is None:
            logger.error(
                "Handoff of conversation %s arrived before the Omnidesk channel started; "
                "it stays with the bot.",
                conversation_id,
            )
            return False
        try:
            await self.relay.start_handoff(conversation_id, channel, started)
        except SwitchboardError as error:
            await self.relay.handoff_not_registered(conversation_id, channel, started, error)
            return False
        await self._hand_customer_token(conversation_id, channel, started)
        return True

    async def _hand_customer_token(
        self, conversation_id: str, channel_name: str, started: HandoffStarted
    ) -> None:
        """Give the customer's channel the token its calls to /upload and /event carry."""
        channel = self._channel_named(channel_name)
        if channel is None:
            return
        base = f"{self.settings.public_url}{self.route_prefix}"
        details = {
            "customer_token": self.settings.customer_token(started.chat_session_id),
            "upload_url": f"{base}/upload",
            "event_url": f"{base}/event",
        }
        try:
            await send_handoff_details(channel, conversation_id, details)
        except Exception as error:
            # The chat goes on; only the customer's files and typing cannot reach the agent.
            logger.warning(
                "Could not hand conversation %s its customer token: %s: %s",
                conversation_id,
                type(error).__name__,
                error,
            )

    def wrap_output(self, output: OutputChannel, channel: str) -> WrappedOutput:
        return WrappedOutput(output, channel, self._on_handoff_started)

    def output_for(self, channel_name: str) -> Optional[OutputChannel]:
        """The wrapped channel's output channel, for a push outside a request."""
        channel = self._channel_named(channel_name)
        if channel is None:
            return None
        output = channel.get_output_channel()
        return None if output is None else self.wrap_output(output, channel_name)

    def get_output_channel(self) -> Optional[OutputChannel]:
        # Only one wrapped channel leaves no doubt which output is meant.
        if len(self.customer_channels) == 1:
            return self.output_for(str(self.customer_channels[0].name()))
        return None

    # -- the blueprint -------------------------------------------------------------

    def _relayed(self, channel: InputChannel, on_new_message: Handler) -> Handler:
        """The wrapped channel's message handler: to the agent when relayed, else to Rasa."""
        channel_name = str(channel.name())

        async def handle(message: UserMessage) -> Any:
            _repair_text(message)
            message.output_channel = self.wrap_output(message.output_channel, channel_name)
            relay = self.relay
            if relay is not None:
                await self._wait_for_turns_before(message.sender_id)
                if await relay.customer_turn(message.sender_id, message.text, channel_name):
                    return None
            _mark_with_bot(message)
            return await on_new_message(message)

        return handle

    async def _wait_for_turns_before(self, conversation_id: str) -> None:
        """Let the conversation's turns under way finish before this one is routed.

        The turn that escalates holds Rasa's lock while the action opens the
        Omnidesk chat (seconds, up to the retry budget), and registers the
        handoff before it lets go. Taking the lock here, and only then reading
        the switchboard, sends a turn typed meanwhile to the agent once the
        chat is open, or to the bot when the escalation failed. The lock is let
        go again before the turn goes anywhere: Rasa's handler takes it itself,
        and the end of a chat (the leave command) writes the tracker under it.
        docs/architecture.md ("Routing a turn under Rasa's lock") says why.
        """
        agent = getattr(getattr(self._app, "ctx", None), "agent", None)
        lock_store = getattr(agent, "lock_store", None)
        if lock_store is None:
            return
        try:
            async with lock_store.lock(conversation_id, wait_time_in_seconds=LOCK_POLL_SECONDS):
                pass
        except Exception as error:
            # Rasa's LockError (an expired ticket) or an unreachable lock store:
            # the turn is routed on what the switchboard says now.
            logger.warning(
                "Could not take Rasa's lock for conversation %s before routing its turn: %s: %s",
                conversation_id,
                type(error).__name__,
                error,
            )

    def _set_route_prefix(self, prefix: str) -> None:
        self.route_prefix = prefix

    def blueprint(self, on_new_message: Handler) -> Blueprint:
        rasa_compat.install_secret_filter()
        wrapped: List[Tuple[InputChannel, Blueprint]] = []
        for channel in self.customer_channels:
            blueprint = channel.blueprint(self._relayed(channel, on_new_message))
            wrapped.append((channel, blueprint))
            self._lines[str(channel.name())] = line_for(
                channel, self.settings.agent_name_prefix, self.presence
            )
            sio = (
                rasa_versions.socketio_server(channel)
                if isinstance(channel, SocketIOInput)
                else None
            )
            if sio is not None:
                self.routes.on_socketio(sio, channel.namespace, bool(channel.session_persistence))
                rasa_compat.await_session_room(
                    channel, on_joined=self.presence.joined, on_left=self.presence.left
                )
                redis_url = self.settings.socketio_url
                if redis_url is not None:
                    self._socket_managers.append(
                        rasa_compat.share_sockets_through_redis(channel, redis_url)
                    )

        bp = rasa_compat.BesideBlueprint(self.url_prefix(), wrapped, self._set_route_prefix)
        rasa_compat.guard_content_length(bp)
        self.routes.add_to(bp)
        listeners: Any = bp

        # (app, _loop=None): the listener form Sanic 21.12 and 25 both accept (rasa_versions).
        async def start(app: Any, _loop: Any = None) -> None:
            await self._start(app, on_new_message)

        async def stop(app: Any, _loop: Any = None) -> None:
            await self._stop()

        listeners.listener("before_server_start")(start)
        listeners.listener("after_server_stop")(stop)
        return bp

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self, app: Any, on_new_message: Handler) -> None:
        rasa_compat.install_secret_filter()
        _warn_lock_store(app, self.settings)
        self._app = app
        switchboard = create_switchboard(self.settings.switchboard_url)
        client = OmnideskClient(self.settings)
        files_dir = str(self.settings.files_dir) if self.settings.files_dir else None
        files = AgentFileStore(
            files_dir,
            self.settings.max_upload_bytes,
            f"{self.settings.public_url}{self.route_prefix}/files",
        )
        bot = RasaBot(app, on_new_message, self.output_for)
        outbox = Outbox(
            create_outbox_store(self.settings.switchboard_url, self.settings.outbox_retention),
            self._lines,
            switchboard,
            retention=self.settings.outbox_retention,
            backoff_base=self.settings.backoff_base,
            backoff_max=self.settings.backoff_max,
        )
        self.presence.start(outbox.store, outbox.kick)
        outbox.start(self.presence)
        self.relay = Relay(
            self.settings, switchboard, client, outbox.lines_for_relay(), bot, files, outbox
        )
        self.sweeper = Sweeper(self.relay, self.settings)
        rasa_compat.register_wrapped_channels(app, self.customer_channels, self.output_for)
        self._sweeping = asyncio.ensure_future(self.sweeper.run(interval_for(self.settings)))
        _warn_if_plain_http(self.settings.public_url)
        logger.info(
            "Omnidesk channel started: wrapping %s; hookpoints at %s; switchboard %s.",
            ", ".join(str(c.name()) for c in self.customer_channels),
            self.settings.chat_server_for_logs,
            self.settings.switchboard_url_for_logs,
        )

    async def _stop(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
            self._sweeping = None
        relay = self.relay
        if relay is None:
            return
        self.relay = None
        self.sweeper = None
        try:
            await relay.close()
        finally:
            await self.presence.stop()
            for manager in self._socket_managers:
                await rasa_compat.stop_shared_sockets(manager)
            await relay.delivery.outbox.store.close()
            await relay.client.close()
            await relay.switchboard.close()
            relay.delivery.files.close()
