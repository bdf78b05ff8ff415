"""Start-up checks of the Omnidesk channel: the wrapped channels and the deployment.

``from_credentials`` (input.py) builds each wrapped customer channel here and
refuses, with a ``ChannelConfigError`` that names the key and the fix, what
cannot work: a channel that is not an InputChannel, one that cannot send
outside a request (``push_refusal``, with its reason, from the channel's class
alone: no call, no session), memory:// with several Sanic workers, a Redis
switchboard without shared ``files_dir``. At start it warns of what may not work: Rasa's
lock store in memory beside a Redis switchboard, hookpoint tokens over plain
http on a public host.
"""

import ipaddress
import logging
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

import rasa.shared.utils.common
from rasa.core.channels import BUILTIN_CHANNELS
from rasa.core.channels.channel import InputChannel
from rasa.core.channels.rest import RestInput

from connectors.omnidesk.channel.lines import has_own_line
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

CHANNEL_NAME = "omnidesk"

__all__ = [
    "CHANNEL_NAME",
    "ChannelConfigError",
    "build_customer_channel",
    "can_push",
    "check_deployment",
    "push_refusal",
    "warn_if_plain_http",
    "warn_lock_store",
]


class ChannelConfigError(ValueError):
    """credentials.yml's entry for the Omnidesk channel is wrong; says which key and why."""


def build_customer_channel(key: Any, credentials: Any) -> InputChannel:
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


# Channels that cannot reach a customer after the request that brought their turn,
# and why: the one place a channel is refused at start-up for that.
VOICE_REFUSAL = (
    "a voice channel: a call is handed to a person by transferring it (your voice "
    "platform's transfer), not by relaying text"
)
ANSWERS_IN_REQUEST = "it answers only inside the request that brought the customer's turn"
CANNOT_PUSH: Mapping[str, str] = {
    # rest itself is served: its client fetches what waits (lines/rest.py).
    "cmdline": "rasa shell reads and prints in one terminal; nothing can reach it later",
    "rasa": ANSWERS_IN_REQUEST,
    "hangouts": ANSWERS_IN_REQUEST,
    "twilio_voice": VOICE_REFUSAL,
    "audiocodes": VOICE_REFUSAL,
    "jambonz": VOICE_REFUSAL,
    "vier_cvg": VOICE_REFUSAL,
}


def push_refusal(channel: InputChannel) -> Optional[str]:
    """Why ``channel`` cannot send a message outside the request that brought a turn; None if it can.

    Asks nothing of the channel that could make a call or open a session: its
    class decides. A channel with a line of its own (lines/, rest's among them:
    its client fetches what waits) can; one Rasa answers only within the request
    (``CANNOT_PUSH``, a voice channel, ``RestInput`` kin such as rasa shell's)
    cannot; any other can when its class gives an
    output channel for later (``get_output_channel``, or Rasa Pro's
    ``get_output_channel_for_conversation``).
    """
    if has_own_line(channel):
        return None
    name = str(channel.name())
    if name in CANNOT_PUSH:
        return CANNOT_PUSH[name]
    if _is_voice(channel):
        return VOICE_REFUSAL
    if _gives_output_later(type(channel)):
        return None
    if isinstance(channel, RestInput):
        return ANSWERS_IN_REQUEST
    return (
        "its class gives no output channel for a message outside a request "
        "(it does not define get_output_channel)"
    )


def can_push(channel: InputChannel) -> bool:
    """Whether ``channel`` can send a message outside the request that brought a turn."""
    return push_refusal(channel) is None


def _is_voice(channel: InputChannel) -> bool:
    # Rasa Pro's voice-stream channels share a base class; Rasa 3.6 has none of them.
    return any(klass.__name__ == "VoiceInputChannel" for klass in type(channel).__mro__)


def _gives_output_later(channel_class: type) -> bool:
    """Whether the class gives an output channel of its own, which InputChannel's does not.

    ``get_output_channel_for_conversation`` is Rasa Pro 3.19's; a channel may
    define it on any Rasa (rasa_compat.output_channel_for asks it first).
    """
    for name in ("get_output_channel", "get_output_channel_for_conversation"):
        base = getattr(InputChannel, name, None)
        own = getattr(channel_class, name, None)
        if own is not None and own is not base:
            return True
    return False


def check_deployment(settings: OmnideskSettings, env: Mapping[str, str]) -> None:
    """Refuse settings that only work in one process when Rasa runs in several."""
    redis = settings.redis_connection is not None
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


def warn_lock_store(app: Any, settings: OmnideskSettings) -> None:
    """A Redis switchboard means several instances; Rasa's lock store must be shared too."""
    if settings.redis_connection is None:
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


def warn_if_plain_http(public_url: str) -> None:
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
