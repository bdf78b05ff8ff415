"""botframework (Teams and every Bot Framework channel): Rasa's ``BotFramework`` output,
posting with aiohttp and reading the connector's answer.

Rasa builds this output per request, from the activity's conversation, bot and
serviceUrl, and gives the channel no ``get_output_channel()``
(RasaHQ/rasa#11593): an agent's reply minutes later needs that conversation
reference. The handoff keeps it, read from the customer's turn (``route_of``),
and the line builds the output from it. Rasa's output posts with blocking
``requests`` and only logs a refusal; here its one sending call
(``_Checked.send``) posts with aiohttp, with a token of the line's own from
Microsoft's token endpoint. A 400, 403 (the bot was removed from the
conversation, an admin disabled it) or 404 (no such conversation) is a refusal
for good; 401 is tried once more with a new token, then again later like 429,
Bot Framework's 5xx and the network.
"""

import asyncio
import json
import time
from typing import Any, Dict, Mapping, Optional

import aiohttp
from rasa.core.channels import botframework as rasa_botframework
from rasa.core.channels.botframework import BotFramework, BotFrameworkInput
from rasa.core.channels.channel import UserMessage

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import API_TIMEOUT, agent_caption, prefixed
from connectors.omnidesk.channel.sides import CustomerLine, FileLink, Undeliverable

TOKEN_SCOPE = "https://api.botframework.com/.default"  # noqa: S105 -- a scope, not a secret
# A token is renewed this many seconds before Microsoft says it expires.
TOKEN_MARGIN = 60.0


class BotFrameworkRefused(RuntimeError):
    """Bot Framework refused a send for now (throttling, its own failure, the token)."""


def route_of(message: UserMessage) -> Optional[Dict[str, str]]:
    """The conversation reference of the turn: serviceUrl, conversation id, the bot's account.

    Read from the output channel Rasa built for the turn from the activity.
    """
    output = message.output_channel
    conversation = getattr(output, "conversation", None)
    bot = getattr(output, "bot", None)
    global_uri = getattr(output, "global_uri", None)
    if not (isinstance(conversation, Mapping) and isinstance(global_uri, str)):
        return None
    conversation_id = conversation.get("id")
    if not conversation_id:
        return None
    route = {
        "service_url": global_uri[: -len("v3/")] if global_uri.endswith("v3/") else global_uri,
        "conversation_id": str(conversation_id),
    }
    if isinstance(bot, Mapping) and bot.get("id"):
        route["bot_id"] = str(bot["id"])
        route["bot_name"] = str(bot.get("name") or "")
    return route


class _Token:
    """The bot's access token for the connector, fetched when missing or about to expire."""

    def __init__(self, app_id: str, app_password: str) -> None:
        self._app_id = app_id
        self._app_password = app_password
        self._token: Optional[str] = None
        self._expires = 0.0
        # Made on first use, in the serving loop (Python 3.8 and 3.9 bind a lock to a loop).
        self._lock: Optional[asyncio.Lock] = None

    def drop(self) -> None:
        self._token = None

    async def get(self, session: aiohttp.ClientSession) -> str:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is not None and time.monotonic() < self._expires:
                return self._token
            # Read at call time, as Rasa's own output reads them.
            url = f"{rasa_botframework.MICROSOFT_OAUTH2_URL}/{rasa_botframework.MICROSOFT_OAUTH2_PATH}"
            form = {
                "client_id": self._app_id,
                "client_secret": self._app_password,
                "grant_type": "client_credentials",
                "scope": TOKEN_SCOPE,
            }
            async with session.post(url, data=form) as answer:
                body = await answer.text()
                if answer.status != 200:
                    raise BotFrameworkRefused(
                        f"Bot Framework gave no token (HTTP {answer.status}): check "
                        "customer_channels.botframework.app_id and app_password"
                    )
            data = json.loads(body)
            self._token = str(data["access_token"])
            self._expires = time.monotonic() + float(data.get("expires_in", 3600)) - TOKEN_MARGIN
            return self._token


def _reason(status: int, body: str) -> str:
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if isinstance(error, Mapping) and error.get("code"):
        return f"Bot Framework {status} {error.get('code')}: {error.get('message', '')}".strip()
    return f"Bot Framework answered HTTP {status}"


class _Connection:
    """The line's HTTP session and token, shared by the line along every route."""

    def __init__(self, app_id: str, app_password: str) -> None:
        self.app_id = app_id
        self.app_password = app_password
        self._token = _Token(app_id, app_password)
        self._session: Optional[aiohttp.ClientSession] = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on the first send, inside the serving loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=API_TIMEOUT))
        return self._session

    async def post(self, url: str, activity: Dict[str, Any]) -> None:
        """Post one activity; Undeliverable for a refusal for good, else raises to retry."""
        session = self._http()
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {await self._token.get(session)}"}
            async with session.post(url, json=activity, headers=headers) as answer:
                body = await answer.text()
                status = answer.status
            if 200 <= status < 300:
                return
            if status == 401 and attempt == 1:
                self._token.drop()
                continue
            if status in (400, 403, 404):
                raise Undeliverable(_reason(status, body))
            raise BotFrameworkRefused(_reason(status, body))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Checked(BotFramework):  # type: ignore[misc]
    """Rasa's BotFramework output whose one sending call posts with aiohttp and checks."""

    def __init__(self, connection: _Connection, route: Mapping[str, str]) -> None:
        bot = {"id": route.get("bot_id", ""), "name": route.get("bot_name", "")}
        super().__init__(
            connection.app_id,
            connection.app_password,
            {"id": route["conversation_id"]},
            bot,
            route["service_url"],
        )
        self._connection = connection

    async def send(self, message_data: Dict[str, Any]) -> None:
        url = f"{self.global_uri}conversations/{self.conversation['id']}/activities"
        await self._connection.post(url, message_data)


class BotFrameworkLine:
    """botframework: text (``Anna: `` prefix), pictures as a hero card, other files as a
    link, typing as a typing activity."""

    held_by_socket = False

    def __init__(
        self,
        channel: BotFrameworkInput,
        name_prefix: bool,
        route: Optional[Mapping[str, str]] = None,
        connection: Optional[_Connection] = None,
    ) -> None:
        self._channel = channel
        self._name_prefix = name_prefix
        self._route = dict(route) if route else None
        self._connection = connection or _Connection(str(channel.app_id), str(channel.app_password))

    def along(self, route: Optional[Mapping[str, str]]) -> CustomerLine:
        return BotFrameworkLine(self._channel, self._name_prefix, route, self._connection)

    def _output(self) -> _Checked:
        route = self._route
        if not route or not route.get("service_url") or not route.get("conversation_id"):
            raise Undeliverable(
                "Bot Framework: no conversation reference was kept for this conversation "
                "(its chat began before the connector kept them)"
            )
        return _Checked(self._connection, route)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        text = prefixed(text, agent, self._name_prefix)
        await self._output().send_text_message(recipient_id, text)

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        output = self._output()
        caption = agent_caption(file, agent, self._name_prefix)
        if file.is_image:
            if caption is not None:
                await output.send_text_message(recipient_id, caption)
            await output.send_image_url(recipient_id, file.url)
            return
        link = prefixed(f"[{file.filename}]({file.url})", agent, self._name_prefix)
        await output.send(
            output.prepare_message(recipient_id, {"text": link, "textFormat": "markdown"})
        )

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        # A typing activity shows for a few seconds or until the next message.
        if typing:
            output = self._output()
            activity = output.prepare_message(recipient_id, {"type": "typing"})
            activity.pop("text", None)
            activity.pop("channelData", None)
            await output.send(activity)
        return True

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await self._output().send_response(recipient_id, message)

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        return False

    async def aclose(self) -> None:
        await self._connection.close()
