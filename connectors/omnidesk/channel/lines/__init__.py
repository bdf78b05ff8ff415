"""The lines to the customer: how each kind of channel reaches a customer outside a request.

One module per channel, as Rasa keeps its channels: ``socketio``, ``callback``,
``rest`` (whose customer pulls what waits), and ``plain`` for any other channel
that can send later through its own output channel. Each line implements
``sides.CustomerLine``; the outbox sends on it, or, on rest, leaves it to the
customer's client.
"""

from rasa.core.channels.callback import CallbackInput
from rasa.core.channels.channel import InputChannel
from rasa.core.channels.socketio import SocketIOInput

from connectors.omnidesk.channel.lines.callback import CallbackLine
from connectors.omnidesk.channel.lines.plain import PlainLine
from connectors.omnidesk.channel.lines.rest import RestLine, is_rest
from connectors.omnidesk.channel.lines.socketio import SocketIOLine
from connectors.omnidesk.channel.sides import CustomerLine

__all__ = ["CallbackLine", "PlainLine", "RestLine", "SocketIOLine", "line_for"]


def line_for(channel: InputChannel, name_prefix: bool) -> CustomerLine:
    """The best way to reach a customer of ``channel`` outside a request."""
    if isinstance(channel, SocketIOInput):
        return SocketIOLine(channel)
    if isinstance(channel, CallbackInput):
        return CallbackLine(channel)
    if is_rest(channel):
        return RestLine(channel)
    return PlainLine(channel, name_prefix)
