"""Pointing each channel's client library at its local fake, without touching Rasa or the product.

Two levels:

- One client a test holds: ``point_telegram_bot``, ``point_messenger_client``,
  ``point_slack_client``, ``point_twilio_client`` set the base URL the library
  itself offers (Bot Framework has no client object: see ``botframework``).
- Every client a process makes, while a ``with`` block lasts: ``telegram``,
  ``graph``, ``slack``, ``twilio``, ``botframework``. Rasa and the product build
  their clients themselves (Rasa 3.6's TelegramInput even calls setWebhook before
  returning the bot), so these wrap the library class's ``__init__`` to apply
  the same base URL to each new instance, and undo it on exit.
  ``from_environment`` enters them for the ``CHANNEL_API_*`` variables; the
  ``on_fakes`` launcher does that in a ``rasa run`` process.

None of the libraries offers an environment variable or a module constant that
is read at call time, except Bot Framework in Rasa's own module.
"""

import contextlib
import datetime
import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

ENVIRONMENT = {
    "CHANNEL_API_TELEGRAM": "telegram",
    "CHANNEL_API_GRAPH": "graph",
    "CHANNEL_API_SLACK": "slack",
    "CHANNEL_API_TWILIO": "twilio",
    "CHANNEL_API_BOTFRAMEWORK": "botframework",
}


def point_telegram_bot(bot: Any, url: str) -> None:
    """An aiogram Bot (Rasa 3.6's TelegramOutput is one; Rasa Pro's has it as ``.bot``)."""
    try:  # aiogram 3 (Rasa Pro 3.13+)
        from aiogram.client.telegram import TelegramAPIServer

        bot.session.api = TelegramAPIServer.from_base(url)
    except ImportError:  # aiogram 2 (Rasa 3.6)
        from aiogram.bot.api import TelegramAPIServer

        bot.server = TelegramAPIServer.from_base(url)


def point_messenger_client(client: Any, url: str) -> None:
    """An fbmessenger MessengerClient (Rasa's MessengerBot has it as ``.messenger_client``)."""
    client.graph_url = f"{url.rstrip('/')}/v{client.api_version}"


def point_slack_client(client: Any, url: str) -> None:
    """A slack_sdk WebClient or AsyncWebClient (Rasa's SlackBot has one as ``.client``)."""
    client.base_url = f"{url.rstrip('/')}/api/"


def point_twilio_client(client: Any, url: str) -> None:
    """A twilio Client (Rasa's TwilioOutput is one). Edge and region would rewrite the host."""
    client.edge = None
    client.region = None
    client.api.base_url = url.rstrip("/")


@contextlib.contextmanager
def _after_init(cls: Any, point: Callable[[Any], None]) -> Iterator[None]:
    original = cls.__dict__["__init__"]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        point(self)

    cls.__init__ = __init__
    try:
        yield
    finally:
        cls.__init__ = original


@contextlib.contextmanager
def telegram(url: str) -> Iterator[None]:
    """Every aiogram bot made meanwhile talks to ``url``."""
    try:  # aiogram 3: the session holds the server
        from aiogram.client.session.base import BaseSession
        from aiogram.client.telegram import TelegramAPIServer as Server3
    except ImportError:  # aiogram 2: the bot holds it
        from aiogram.bot.api import TelegramAPIServer
        from aiogram.bot.base import BaseBot

        server = TelegramAPIServer.from_base(url)
        with _after_init(BaseBot, lambda bot: setattr(bot, "server", server)):
            yield
        return
    api = Server3.from_base(url)
    with _after_init(BaseSession, lambda session: setattr(session, "api", api)):
        yield


@contextlib.contextmanager
def graph(url: str) -> Iterator[None]:
    """Every fbmessenger MessengerClient made meanwhile talks to ``url``."""
    from fbmessenger import MessengerClient

    with _after_init(MessengerClient, lambda client: point_messenger_client(client, url)):
        yield


@contextlib.contextmanager
def slack(url: str) -> Iterator[None]:
    """Every slack_sdk web client, async or not, made meanwhile talks to ``url``."""
    from slack_sdk.web.async_base_client import AsyncBaseClient
    from slack_sdk.web.base_client import BaseClient

    def point(client: Any) -> None:
        point_slack_client(client, url)

    with _after_init(AsyncBaseClient, point), _after_init(BaseClient, point):
        yield


@contextlib.contextmanager
def twilio(url: str) -> Iterator[None]:
    """Every twilio Client made meanwhile talks to ``url`` (TWILIO_EDGE/REGION are unset)."""
    from twilio.rest import Client

    saved = {name: os.environ.pop(name, None) for name in ("TWILIO_EDGE", "TWILIO_REGION")}
    try:
        with _after_init(Client, lambda client: point_twilio_client(client, url)):
            yield
    finally:
        os.environ.update({name: value for name, value in saved.items() if value is not None})


@contextlib.contextmanager
def botframework(url: str) -> Iterator[None]:
    """Rasa's Bot Framework channel fetches its keys and tokens from ``url``.

    The replies go to the serviceUrl of the customer's activity, which the fake
    hands out itself. The access token is cached on Rasa's ``BotFramework`` class,
    for every app id and test alike: it is cleared on entry and on exit.
    """
    from rasa.core.channels import botframework as channel

    base = url.rstrip("/")
    names = {
        "MICROSOFT_OPEN_ID_URI": f"{base}/v1/.well-known/openidconfiguration",
        "MICROSOFT_OAUTH2_URL": base,
    }
    saved: Dict[str, Any] = {name: getattr(channel, name) for name in names}
    cache: Dict[str, Any] = {
        "token_expiration_date": channel.BotFramework.token_expiration_date,
        "headers": channel.BotFramework.headers,
    }

    def clear_token() -> None:
        channel.BotFramework.token_expiration_date = datetime.datetime.min
        channel.BotFramework.headers = None

    for name, value in names.items():
        setattr(channel, name, value)
    clear_token()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(channel, name, value)
        for name, value in cache.items():
            setattr(channel.BotFramework, name, value)


REDIRECTS: Mapping[str, Callable[[str], "contextlib.AbstractContextManager[None]"]] = {
    "telegram": telegram,
    "graph": graph,
    "slack": slack,
    "twilio": twilio,
    "botframework": botframework,
}


def from_environment(
    stack: contextlib.ExitStack, environ: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """Enter the redirect of each ``CHANNEL_API_*`` variable set; returns {api: url}."""
    environ = os.environ if environ is None else environ
    applied: Dict[str, str] = {}
    for variable, api in ENVIRONMENT.items():
        url = environ.get(variable)
        if url:
            stack.enter_context(REDIRECTS[api](url))
            applied[api] = url
    return applied
