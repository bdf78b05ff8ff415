"""slack: Rasa's own ``SlackBot``, pointed at the channel and thread the customer wrote in.

Rasa answers a Slack turn where it came from: the event's channel (a DM, a
channel the bot was mentioned in), in its thread with ``use_threads``. An
agent's reply must go to the same place, minutes later and outside that
request, so the handoff keeps the turn's route (``route_of``) and the line
sends along it. Never to ``slack_channel`` from credentials.yml, which would
show one customer's chat to everyone in that channel. slack_sdk raises a
``SlackApiError`` for every refusal: a channel or user Slack does not find,
an archived channel, a bot removed from it, a text Slack will not take are
refusals for good; rate limits, Slack's own failures and a token it does not
take are tried again.
"""

import re
from typing import Any, Dict, Mapping, Optional

from rasa.core.channels.channel import UserMessage
from rasa.core.channels.slack import SlackBot, SlackInput

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import agent_caption, checked, prefixed
from connectors.omnidesk.channel.sides import CustomerLine, FileLink, Undeliverable

# Slack's answers that no retry changes (https://api.slack.com/methods/chat.postMessage).
REFUSED_FOR_GOOD = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "user_not_found",
        "user_not_visible",
        "account_inactive",
        "cannot_dm_bot",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "too_many_attachments",
    }
)
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")


def route_of(channel: SlackInput, message: UserMessage) -> Optional[Dict[str, str]]:
    """Where Rasa replies to this turn: the event's channel, and its thread with use_threads.

    Read from the metadata Rasa's Slack channel gives every turn
    (``out_channel``, ``thread_id``), as its own ``process_message`` does.
    """
    metadata = message.metadata if isinstance(message.metadata, Mapping) else {}
    channel_id = metadata.get("out_channel")
    if not isinstance(channel_id, str) or not channel_id:
        return None
    route = {"channel": channel_id}
    thread = metadata.get("thread_id")
    if getattr(channel, "use_threads", False) and isinstance(thread, str) and thread:
        route["thread_ts"] = thread
    return route


def refusal_of(error: BaseException) -> Optional[str]:
    """Slack's refusal for good in ``error``, as a reason; None for one worth retrying."""
    from slack_sdk.errors import SlackApiError

    if not isinstance(error, SlackApiError):
        return None
    answer = getattr(error, "response", None)
    code = answer.get("error") if answer is not None else None
    if code in REFUSED_FOR_GOOD:
        return f"Slack: {code}"
    return None


class SlackLine:
    """slack: text (``Anna: `` prefix), pictures as an image block, other files as a link.

    Slack shows no typing for a bot's Web API messages: typing is dropped.
    """

    held_by_socket = False

    def __init__(
        self,
        channel: SlackInput,
        name_prefix: bool,
        route: Optional[Mapping[str, str]] = None,
    ) -> None:
        self._channel = channel
        self._name_prefix = name_prefix
        self._route = dict(route) if route else None

    def along(self, route: Optional[Mapping[str, str]]) -> CustomerLine:
        return SlackLine(self._channel, self._name_prefix, route)

    def _bot(self, recipient_id: str) -> SlackBot:
        """Rasa's SlackBot for the route (no call is made building it)."""
        route = self._route or {}
        channel_id = route.get("channel")
        if not channel_id:
            if not _USER_ID.match(recipient_id):
                raise Undeliverable(
                    "Slack: no channel was kept for this conversation (its chat began before "
                    "the connector kept Slack routes)"
                )
            # A conversation per user: Slack delivers a post to a user id in the app's DM.
            channel_id = recipient_id
        bot: SlackBot = self._channel.get_output_channel(channel_id, route.get("thread_ts"))
        return bot

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        bot = self._bot(recipient_id)
        text = prefixed(text, agent, self._name_prefix)
        await checked(refusal_of, bot.send_text_message(recipient_id, text))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        bot = self._bot(recipient_id)
        title = agent_caption(file, agent, self._name_prefix) or file.filename
        if file.is_image:
            block = {"type": "image", "image_url": file.url, "alt_text": file.filename}
            await checked(
                refusal_of, bot.send_custom_json(recipient_id, {"text": title, "blocks": [block]})
            )
            return
        text = prefixed(f"<{file.url}|{file.filename}>", agent, self._name_prefix)
        await checked(refusal_of, bot.send_text_message(recipient_id, text))

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        return False

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await checked(refusal_of, self._bot(recipient_id).send_response(recipient_id, message))

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        return False
