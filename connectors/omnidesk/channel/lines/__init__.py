"""The lines to the customer: how each kind of channel reaches a customer outside a request.

One module per channel, as Rasa keeps its channels: ``socketio``, ``callback``,
``telegram``, ``facebook``, ``slack``, ``twilio``, ``botframework``, ``rest``
(whose customer pulls what waits), and ``plain`` for any other channel that can
send later through its own output channel. Each line implements
``sides.CustomerLine``; the outbox sends on it, or, on rest, leaves it to the
customer's client.
A line whose channel needs more than the conversation id to reply (Slack's
channel and thread, Teams' conversation reference) reads it from the
customer's turn (``route_of``); the handoff keeps it, and the line is given it
(``sides.RoutedLine``). A channel is recognised by its Rasa class or a
subclass of it, without importing channels whose client library is missing.
"""

import inspect
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Mapping, Optional, Protocol, runtime_checkable

from rasa.core.channels.callback import CallbackInput
from rasa.core.channels.channel import InputChannel, UserMessage
from rasa.core.channels.socketio import SocketIOInput

from connectors.omnidesk.channel.lines.callback import CallbackLine
from connectors.omnidesk.channel.lines.plain import PlainLine
from connectors.omnidesk.channel.lines.rest import RestLine, is_rest
from connectors.omnidesk.channel.lines.socketio import SocketIOLine
from connectors.omnidesk.channel.rasa_compat import is_rasa_channel
from connectors.omnidesk.channel.sides import CustomerLine

logger = logging.getLogger(__name__)

__all__ = [
    "CallbackLine",
    "LineOptions",
    "PlainLine",
    "RestLine",
    "SocketIOLine",
    "StatusCallbacks",
    "close_lines",
    "has_own_line",
    "line_for",
    "route_of",
]

# Rasa's channels with a line of their own here: (module, class) -> line kind.
OWN_LINES: Mapping[str, str] = {
    "rasa.core.channels.telegram.TelegramInput": "telegram",
    "rasa.core.channels.facebook.FacebookInput": "facebook",
    "rasa.core.channels.slack.SlackInput": "slack",
    "rasa.core.channels.twilio.TwilioInput": "twilio",
    "rasa.core.channels.botframework.BotFrameworkInput": "botframework",
}


@dataclass(frozen=True)
class LineOptions:
    """What the lines need from the settings and the running channel."""

    name_prefix: bool = True  # agent_name_prefix
    human_agent_tag: bool = True  # messenger_human_agent_tag
    # The connector's routes, {public_url}/webhooks/omnidesk, read when a line sends
    # (Rasa gives the blueprint its prefix after the lines are made).
    routes_url: Callable[[], str] = field(default=lambda: "")


@runtime_checkable
class StatusCallbacks(Protocol):
    """A line whose channel reports later what became of a message (Twilio)."""

    def signature_ok(self, url: str, params: Mapping[str, str], signature: str) -> bool:
        """Whether the channel's service signed this callback (its URL and form)."""
        ...

    def failure_in(self, params: Mapping[str, str]) -> Optional[str]:
        """Why the callback's message did not reach the customer; None when it did or may."""
        ...


def own_line_kind(channel: InputChannel) -> Optional[str]:
    """Which of ``OWN_LINES`` serves ``channel`` (a Rasa channel or a subclass), if any."""
    for path, kind in OWN_LINES.items():
        module, name = path.rsplit(".", 1)
        if is_rasa_channel(channel, module, name):
            return kind
    return None


def has_own_line(channel: InputChannel) -> bool:
    """Whether a line here reaches ``channel``'s customers without asking it for an output."""
    return (
        isinstance(channel, (SocketIOInput, CallbackInput))
        or own_line_kind(channel) is not None
        or is_rest(channel)
    )


def line_for(channel: InputChannel, options: LineOptions) -> CustomerLine:
    """The best way to reach a customer of ``channel`` outside a request."""
    if isinstance(channel, SocketIOInput):
        return SocketIOLine(channel)
    if isinstance(channel, CallbackInput):
        return CallbackLine(channel)
    if is_rest(channel):
        return RestLine(channel)
    kind = own_line_kind(channel)
    if kind == "telegram":
        from connectors.omnidesk.channel.lines.telegram import TelegramLine

        return TelegramLine(channel, options.name_prefix)
    if kind == "facebook":
        from connectors.omnidesk.channel.lines.facebook import FacebookLine

        return FacebookLine(channel, options.name_prefix, options.human_agent_tag)
    if kind == "slack":
        from connectors.omnidesk.channel.lines.slack import SlackLine

        return SlackLine(channel, options.name_prefix)
    if kind == "twilio":
        from connectors.omnidesk.channel.lines.twilio import TwilioLine

        return TwilioLine(channel, options.name_prefix, options.routes_url)
    if kind == "botframework":
        from connectors.omnidesk.channel.lines.botframework import BotFrameworkLine

        return BotFrameworkLine(channel, options.name_prefix)
    return PlainLine(channel, options.name_prefix)


def route_of(channel: InputChannel, message: UserMessage) -> Optional[Dict[str, str]]:
    """Where this turn's customer gets replies, for a channel that needs more than its id.

    Slack: the channel (and thread) of the turn. Bot Framework: the
    conversation reference. None for every other channel.
    """
    kind = own_line_kind(channel)
    if kind == "slack":
        from connectors.omnidesk.channel.lines import slack

        return slack.route_of(channel, message)
    if kind == "botframework":
        from connectors.omnidesk.channel.lines import botframework

        return botframework.route_of(message)
    return None


async def close_lines(lines: Iterable[CustomerLine]) -> None:
    """Close the HTTP sessions lines opened (at shutdown, after the outbox has stopped)."""
    for line in lines:
        close = getattr(line, "aclose", None)
        if close is None:
            continue
        try:
            closed = close()
            if inspect.isawaitable(closed):
                await closed
        except Exception as error:
            logger.warning(
                "Could not close the %s cleanly: %s: %s",
                type(line).__name__,
                type(error).__name__,
                error,
            )
