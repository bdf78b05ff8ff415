"""telegram: Rasa's own ``TelegramOutput``, built once for the line, its refusals read.

The output is built directly, never through ``TelegramInput.get_output_channel()``,
which on Rasa 3.6 runs ``asyncio.run`` (rasa_compat.keep_in_serving_loop). Its
aiogram bot opens its HTTP session on the first call, in the serving loop, and
the line closes it at shutdown. aiogram raises what Telegram refused: a 400
(chat not found, message too long, a file Telegram could not fetch) or a 403
(the customer blocked the bot, deactivated their account) is a refusal for
good; flood control (429), Telegram's 5xx, a bot token Telegram does not know
(401) and the network are tried again.
"""

from typing import Any, Dict, Mapping, Optional

from rasa.core.channels.telegram import TelegramInput, TelegramOutput

from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import (
    agent_caption,
    checked,
    file_as_text,
    prefixed,
)
from connectors.omnidesk.channel.sides import FileLink


def refusal_of(error: BaseException) -> Optional[str]:
    """Telegram's refusal for good in ``error``, as a reason; None for one worth retrying.

    aiogram 3 (Rasa Pro 3.13 on) names its errors by status; aiogram 2 (Rasa
    3.6) raises ``BadRequest`` for a 400 and ``Unauthorized`` for both 401 (the
    bot's token, worth retrying once fixed) and 403 ("Forbidden: ...").
    """
    try:
        from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
    except ImportError:
        from aiogram.utils.exceptions import BadRequest, Unauthorized

        if isinstance(error, BadRequest):
            return f"Telegram: {error}"
        if isinstance(error, Unauthorized) and str(error).lower().startswith("forbidden"):
            return f"Telegram: {error}"
        return None
    if isinstance(error, (TelegramBadRequest, TelegramForbiddenError)):
        return f"Telegram: {getattr(error, 'message', error)}"
    return None


class TelegramLine:
    """telegram: text (``Anna: `` prefix), photos with the agent's name as caption,
    other files as a link, typing as the "typing" chat action."""

    held_by_socket = False

    def __init__(self, channel: TelegramInput, name_prefix: bool) -> None:
        self._token = channel.access_token
        self._name_prefix = name_prefix
        self._output: Optional[TelegramOutput] = None

    def _out(self) -> TelegramOutput:
        if self._output is None:
            self._output = TelegramOutput(self._token)
        return self._output

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        text = prefixed(text, agent, self._name_prefix)
        await checked(refusal_of, self._out().send_text_message(recipient_id, text))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        if not file.is_image:
            # Telegram fetches a document by URL only for PDF, ZIP and GIF: a link always works.
            text = file_as_text(file, agent, self._name_prefix)
            await checked(refusal_of, self._out().send_text_message(recipient_id, text))
            return
        bot = rasa_compat.telegram_bot(self._out())
        caption = agent_caption(file, agent, self._name_prefix)
        await checked(refusal_of, bot.send_photo(recipient_id, file.url, caption=caption))

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        # The chat action shows for 5 s or until the next message; "stopped" needs no call.
        if typing:
            bot = rasa_compat.telegram_bot(self._out())
            await checked(refusal_of, bot.send_chat_action(recipient_id, "typing"))
        return True

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await checked(refusal_of, self._out().send_response(recipient_id, message))

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        return False

    async def aclose(self) -> None:
        if self._output is not None:
            await rasa_compat.close_telegram_output(self._output)
            self._output = None
