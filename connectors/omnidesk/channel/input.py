"""OmnideskInput: the channel a Rasa developer names in credentials.yml.

Rasa's face of the connector: ``from_credentials`` validates everything at
start-up, ``blueprint`` wraps the customer's own channels (socketio, callback,
rest, or any channel that can send outside a request) and serves their routes at
their usual URLs beside the connector's own (routes.py), and the listeners
build and close the running parts. It routes a customer turn by asking the
relay once; relay.py decides. The start-up checks live in startup.py, what
happens to a turn before it is routed in incoming.py. docs/channel.md is its
reference.
"""

import asyncio
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from rasa.core.channels.socketio import SocketIOInput
from sanic import Blueprint

from connectors.omnidesk import handoff_events, tasks
from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.customer import WrappedOutput, outbox_output
from connectors.omnidesk.channel.files import AgentFileStore
from connectors.omnidesk.channel.health import Health
from connectors.omnidesk.channel.incoming import mark_with_bot, repair_text
from connectors.omnidesk.channel.lines import (
    LineOptions,
    StatusCallbacks,
    close_lines,
    line_for,
    route_of,
)
from connectors.omnidesk.channel.lines.rest import carrying_what_waits
from connectors.omnidesk.channel.outbox import Outbox, OutboxTimings
from connectors.omnidesk.channel.rasa_bot import RasaBot
from connectors.omnidesk.channel.rasa_compat import Handler, Lifecycle
from connectors.omnidesk.channel.redis_clients import RedisClients
from connectors.omnidesk.channel.redis_switchboard import create_switchboard
from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.routes import Routes
from connectors.omnidesk.channel.sides import CustomerLine, is_pulled
from connectors.omnidesk.channel.startup import (
    CHANNEL_NAME,
    ChannelConfigError,
    build_customer_channel,
    check_deployment,
    push_refusal,
    warn_if_plain_http,
    warn_lock_store,
)
from connectors.omnidesk.channel.sweeper import Sweeper, interval_for
from connectors.omnidesk.client import OmnideskClient
from connectors.omnidesk.handoff import HandoffStarted
from connectors.omnidesk.settings import OmnideskSettings, SettingsError

logger = logging.getLogger(__name__)

__all__ = ["CHANNEL_NAME", "ChannelConfigError", "OmnideskInput"]


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
        check_deployment(settings, os.environ)
        channels = [build_customer_channel(key, value) for key, value in customer.items()]
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
        refused = [
            f"{channel.name()} ({reason})"
            for channel, reason in ((c, push_refusal(c)) for c in customer_channels)
            if reason is not None
        ]
        if refused:
            raise ChannelConfigError(
                f"customer_channels: {'; '.join(refused)}: it cannot send a message outside "
                "the request that brought the customer's turn, and its customer cannot fetch "
                "one later, so agent replies could not reach the customer. Use rest (its "
                "client polls or streams them), or a channel that can push: socketio, "
                "callback, telegram, facebook, slack, twilio, botframework, or one with its "
                "own get_output_channel."
            )
        self.settings = settings
        self.customer_channels = list(customer_channels)
        self.route_prefix = "/webhooks/" + CHANNEL_NAME
        self.relay: Optional[Relay] = None
        self.sweeper: Optional[Sweeper] = None
        # Liveness and readiness: the switchboard's Redis and Omnidesk, as lately seen.
        self.health = Health(settings)
        self.routes = Routes(settings, lambda: self.relay, self.health)
        self._lines: Dict[str, CustomerLine] = {}
        # Wrapped channels repaired to live in the serving loop (rasa_compat).
        self._repaired: List[Lifecycle] = []
        self._sweeping: Optional[asyncio.Task[None]] = None
        # Where the customer's socket.io sessions are connected: the outbox keeps it.
        self.outbox: Optional[Outbox] = None
        self._socket_managers: List[Any] = []
        # The one data client and subscriber the switchboard and the outbox share.
        self._redis: Optional[RedisClients] = None

    # -- outputs -----------------------------------------------------------------

    def _channel_named(self, name: str) -> Optional[InputChannel]:
        for channel in self.customer_channels:
            if channel.name() == name:
                return channel
        return None

    async def _on_handoff_started(
        self,
        conversation_id: str,
        channel: str,
        started: HandoffStarted,
        route: Optional[Mapping[str, str]] = None,
    ) -> bool:
        """Register the handoff; False when it could not be (the chat was ended, the customer told)."""
        if self.relay is None:
            logger.error(
                "Handoff of conversation %s arrived before the Omnidesk channel started; "
                "it stays with the bot.",
                conversation_id,
            )
            return False
        return await self.relay.start(conversation_id, channel, started, route)

    async def _socket_joined(self, recipient_id: str, socket_id: str) -> None:
        if self.outbox is not None:
            await self.outbox.socket_joined(recipient_id, socket_id)

    async def _socket_left(self, socket_id: str) -> None:
        if self.outbox is not None:
            await self.outbox.socket_left(socket_id)

    def wrap_output(
        self, output: OutputChannel, channel: str, route: Optional[Mapping[str, str]] = None
    ) -> WrappedOutput:
        return WrappedOutput(output, channel, self._on_handoff_started, route)

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
            repair_text(message)
            route = route_of(channel, message)
            output = self.wrap_output(message.output_channel, channel_name, route)
            message.output_channel = output

            async def to_bot() -> Any:
                mark_with_bot(message)
                return await on_new_message(message)

            async def tell_here(text: str) -> None:
                await output.send_text_message(message.sender_id, text)

            relay = self.relay
            if relay is None:
                return await to_bot()
            # In line at once, served in the order turns arrived (relay.py).
            return await relay.turn(message.sender_id, message.text, to_bot, tell_here)

        return handle

    def _set_route_prefix(self, prefix: str) -> None:
        self.route_prefix = prefix

    def blueprint(self, on_new_message: Handler) -> Blueprint:
        rasa_compat.install_secret_filter()
        wrapped: List[Tuple[InputChannel, Blueprint]] = []
        options = LineOptions(
            name_prefix=self.settings.agent_name_prefix,
            human_agent_tag=self.settings.messenger_human_agent_tag,
            routes_url=lambda: f"{self.settings.public_url}{self.route_prefix}",
        )
        for channel in self.customer_channels:
            repaired = rasa_compat.keep_in_serving_loop(channel)
            if repaired is not None:
                self._repaired.append(repaired)
            line = line_for(channel, options)
            handler = self._relayed(channel, on_new_message)
            if is_pulled(line):
                # rest: the answer to a turn also carries what waits for the customer.
                handler = carrying_what_waits(handler, lambda: self.outbox)
            blueprint = channel.blueprint(handler)
            wrapped.append((channel, blueprint))
            self._lines[str(channel.name())] = line
            if isinstance(line, StatusCallbacks):
                self.routes.on_status_callbacks(str(channel.name()), line)
            sio = (
                rasa_compat.socketio_server(channel) if isinstance(channel, SocketIOInput) else None
            )
            if sio is not None:
                self.routes.on_socketio(sio, channel.namespace, bool(channel.session_persistence))
                rasa_compat.await_session_room(
                    channel, on_joined=self._socket_joined, on_left=self._socket_left
                )
                connection = self.settings.socketio_connection
                if connection is not None:
                    self._socket_managers.append(
                        rasa_compat.share_sockets_through_redis(channel, connection)
                    )

        bp = rasa_compat.BesideBlueprint(self.url_prefix(), wrapped, self._set_route_prefix)
        rasa_compat.guard_content_length(bp)
        self.routes.add_to(bp)
        listeners: Any = bp

        # (app, _loop=None): the listener form Sanic 21.12 and 25 both accept (rasa_compat).
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
        handoff_events.configure(self.settings.log_format, self.settings.log_message_text)
        warn_lock_store(app, self.settings)
        for repaired in self._repaired:
            await repaired.start()
        connection = self.settings.redis_connection
        self._redis = RedisClients(connection) if connection is not None else None
        switchboard = create_switchboard(
            self._redis,
            self.settings.outbox_retention,
            wait_replicas=self.settings.redis_wait_replicas,
            wait_timeout=self.settings.redis_wait_timeout,
        )
        client = OmnideskClient(self.settings, transport=self.health.transport())
        files_dir = str(self.settings.files_dir) if self.settings.files_dir else None
        files = AgentFileStore(
            files_dir,
            self.settings.max_upload_bytes,
            f"{self.settings.public_url}{self.route_prefix}/files",
        )
        outbox = Outbox(
            switchboard.outbox_store,
            self._lines,
            OutboxTimings.from_settings(self.settings),
        )
        bot = RasaBot(app, on_new_message, lambda handoff: outbox_output(outbox, handoff))
        outbox.start()
        self.outbox = outbox
        routes_url = f"{self.settings.public_url}{self.route_prefix}"
        self.relay = Relay(self.settings, switchboard, client, outbox, bot, files, routes_url)
        self.sweeper = Sweeper(self.relay, switchboard, self.settings)
        rasa_compat.register_wrapped_channels(app, self.customer_channels, self.output_for)
        self._sweeping = asyncio.ensure_future(self.sweeper.run(interval_for(self.settings)))
        self.health.start()
        warn_if_plain_http(self.settings.public_url)
        logger.info(
            "Omnidesk channel started: wrapping %s; hookpoints at %s; switchboard %s.",
            ", ".join(str(c.name()) for c in self.customer_channels),
            self.settings.chat_server_for_logs,
            self.settings.switchboard_for_logs,
        )

    async def _stop(self) -> None:
        await self.health.stop()
        await tasks.stop(self._sweeping)
        self._sweeping = None
        relay = self.relay
        if relay is None:
            return
        self.relay = None
        self.sweeper = None
        try:
            await relay.close()
        finally:
            self.outbox = None
            if self._redis is not None:
                await self._redis.close()
                self._redis = None
            for manager in self._socket_managers:
                await rasa_compat.stop_shared_sockets(manager)
            await close_lines(self._lines.values())
            for repaired in self._repaired:
                await repaired.stop()
