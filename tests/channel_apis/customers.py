"""A customer on each channel, as that channel's service shows them to Rasa and records them.

Each customer writes to Rasa the way the service posts to a bot's webhook (a
Telegram update, a signed Messenger event, a signed Slack mention, Twilio's
form, a signed Bot Framework activity) and reads what reached them from the
service's fake: only calls addressed to their own conversation (chat, PSID,
channel and thread, phone number, Teams conversation) count. Every customer
has ids of its own, so tests sharing one Rasa and one fake stay apart.

The same customers serve the channel tests on a Sanic server of their own
(tests/channel/test_customer_channels.py, on both Rasa lines) and the journeys
on a real ``rasa run`` (tests/e2e/test_channel_journeys.py).
"""

import asyncio
import json
import random
import uuid
from typing import Any, Dict, List, Optional

import aiohttp

from tests.channel_apis import botframework, graph, slack, telegram, twilio
from tests.channel_apis.fake_api import Answer, Call, FakeApi

WEBHOOK_URL = "https://bot.example.com/webhooks/telegram/webhook"
# Slack: the channel every customer's thread is in, and a channel no reply may go to.
SUPPORT_CHANNEL = "C0SUPPORT"
FIXED_SLACK_CHANNEL = "C0EVERYONE"


def _digits(count: int) -> str:
    return "".join(random.choice("0123456789") for _ in range(count))


def _upper(count: int) -> str:
    return uuid.uuid4().hex[:count].upper()


class FakeCustomer:
    """What every channel's customer does; each subclass says how on its channel."""

    channel = ""  # the Rasa channel's name (its routes are /webhooks/<name>/...)
    api: FakeApi
    conversation_id = ""  # the sender id Rasa gives the customer's turns

    @property
    def credentials_key(self) -> str:
        """Its key under customer_channels: a built-in name, or a channel's module path."""
        return self.channel

    def credentials(self) -> Dict[str, Any]:
        raise NotImplementedError

    async def say(self, http: aiohttp.ClientSession, rasa_url: str, text: str) -> None:
        raise NotImplementedError

    def mine(self, call: Call) -> bool:
        """Whether ``call`` is addressed to this customer's own conversation."""
        raise NotImplementedError

    def text_of(self, call: Call) -> Optional[str]:
        raise NotImplementedError

    def image_url_of(self, call: Call) -> Optional[str]:
        """The URL of the picture ``call`` shows the customer, if it shows one."""
        raise NotImplementedError

    def shows_image(self, call: Call, url_part: str) -> bool:
        """Whether ``call`` shows the customer a picture whose URL contains ``url_part``."""
        return url_part in (self.image_url_of(call) or "")

    def shows_typing(self, call: Call) -> bool:
        return False

    refusal: Answer  # the channel's refusal for good of a message to this customer

    def refuse(self) -> None:
        self.api.refuse(self.recipient, self.refusal)

    def accept(self) -> None:
        self.api.accept(self.recipient)

    @property
    def recipient(self) -> str:
        """Whom the fake's calls to this customer are addressed to."""
        return self.conversation_id

    # Reading what arrived.

    def calls(self) -> List[Call]:
        return [call for call in list(self.api.calls) if call.status < 300 and self.mine(call)]

    def texts(self) -> List[str]:
        return [text for text in (self.text_of(call) for call in self.calls()) if text]

    def elsewhere(self) -> List[Call]:
        """Sends of the channel that reached no customer's own conversation."""
        return [
            call
            for call in list(self.api.calls)
            if call.api_method in self.send_methods and not self.mine(call)
        ]

    send_methods: frozenset = frozenset()

    async def wait_for_text(self, fragment: str, after: int = 0, timeout: float = 20.0) -> str:
        """The first text from the ``after``-th on that contains ``fragment``, once it arrived."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = next((text for text in self.texts()[after:] if fragment in text), None)
            if found is not None:
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"{self.channel} customer {self.conversation_id}: no message with "
                    f"{fragment!r} within {timeout} s; got {self.texts()!r}"
                )
            await asyncio.sleep(0.05)

    async def wait_for(self, what: str, predicate: Any, timeout: float = 20.0) -> Call:
        try:
            return await self.api.wait_for(
                lambda call: call.status < 300 and self.mine(call) and predicate(call),
                timeout=timeout,
            )
        except AssertionError as error:
            raise AssertionError(f"{self.channel} customer: {what}: {error}") from None


class TelegramCustomer(FakeCustomer):
    channel = "telegram"
    api: telegram.TelegramApi
    send_methods = frozenset({"sendMessage", "sendPhoto", "sendDocument", "sendChatAction"})
    refusal = telegram.BOT_BLOCKED

    def __init__(self, api: telegram.TelegramApi) -> None:
        self.api = api
        self.chat_id = int("7" + _digits(8))
        self.conversation_id = str(self.chat_id)
        self._updates = random.randrange(1, 10**6)

    def credentials(self) -> Dict[str, Any]:
        return {
            "access_token": telegram.TOKEN,
            "verify": telegram.BOT_USERNAME,
            "webhook_url": WEBHOOK_URL,
        }

    async def say(self, http: aiohttp.ClientSession, rasa_url: str, text: str) -> None:
        self._updates += 1
        update = telegram.update(self.chat_id, text, update_id=self._updates)
        async with http.post(f"{rasa_url}/webhooks/telegram/webhook", json=update) as answer:
            body = await answer.text()
            assert answer.status == 200, f"telegram webhook answered {answer.status}: {body}"

    def mine(self, call: Call) -> bool:
        return call.recipient == self.conversation_id

    def text_of(self, call: Call) -> Optional[str]:
        return call.param("text") if call.api_method == "sendMessage" else None

    def image_url_of(self, call: Call) -> Optional[str]:
        return str(call.param("photo")) if call.api_method == "sendPhoto" else None

    def shows_typing(self, call: Call) -> bool:
        return call.api_method == "sendChatAction" and call.param("action") == "typing"


class MessengerCustomer(FakeCustomer):
    channel = "facebook"
    api: graph.GraphApi
    send_methods = frozenset({"message", "sender_action"})
    refusal = graph.OUTSIDE_WINDOW

    def __init__(self, api: graph.GraphApi) -> None:
        self.api = api
        self.conversation_id = "65" + _digits(14)
        self._mids = 0

    def credentials(self) -> Dict[str, Any]:
        return {
            "verify": "verify-me",
            "secret": graph.APP_SECRET,
            "page-access-token": graph.PAGE_ACCESS_TOKEN,
        }

    async def say(self, http: aiohttp.ClientSession, rasa_url: str, text: str) -> None:
        self._mids += 1
        event = graph.message_event(self.conversation_id, text, mid=f"m_{uuid.uuid4().hex}")
        body, headers = graph.signed(event)
        url = f"{rasa_url}/webhooks/facebook/webhook"
        async with http.post(url, data=body, headers=headers) as answer:
            answered = await answer.text()
            assert answer.status == 200, f"facebook webhook answered {answer.status}: {answered}"

    def mine(self, call: Call) -> bool:
        return call.recipient == self.conversation_id

    def message(self, call: Call) -> Dict[str, Any]:
        body = call.json if isinstance(call.json, dict) else {}
        message = body.get("message")
        return message if isinstance(message, dict) else {}

    def text_of(self, call: Call) -> Optional[str]:
        text = self.message(call).get("text")
        return text if isinstance(text, str) else None

    def image_url_of(self, call: Call) -> Optional[str]:
        attachment = self.message(call).get("attachment") or {}
        if attachment.get("type") != "image":
            return None
        return str((attachment.get("payload") or {}).get("url"))

    def shows_typing(self, call: Call) -> bool:
        return isinstance(call.json, dict) and call.json.get("sender_action") == "typing_on"

    @staticmethod
    def tag_of(call: Call) -> Optional[str]:
        return call.json.get("tag") if isinstance(call.json, dict) else None


class SlackCustomer(FakeCustomer):
    """A Slack user who mentions the bot in a thread of the support channel."""

    channel = "slack"
    api: slack.SlackApi
    send_methods = frozenset({"chat.postMessage"})
    refusal = slack.IS_ARCHIVED

    def __init__(self, api: slack.SlackApi) -> None:
        self.api = api
        self.user = "U0" + _upper(8)
        self.conversation_id = self.user  # Rasa's default conversation_granularity: the sender
        self.thread = f"17{_digits(8)}.{_digits(6)}"

    def credentials(self) -> Dict[str, Any]:
        # slack_channel: where Rasa would post when an event names no channel. The
        # agent's replies must never go there: they belong to the customer's thread.
        return {
            "slack_token": slack.BOT_TOKEN,
            "slack_signing_secret": slack.SIGNING_SECRET,
            "slack_channel": FIXED_SLACK_CHANNEL,
            "use_threads": True,
        }

    @property
    def recipient(self) -> str:
        return SUPPORT_CHANNEL

    def refuse(self) -> None:
        # Slack refuses per channel; this customer's thread is in the support channel.
        self.api.refuse(SUPPORT_CHANNEL, self.refusal)

    async def say(self, http: aiohttp.ClientSession, rasa_url: str, text: str) -> None:
        event = slack.mention_event(self.user, text, SUPPORT_CHANNEL, thread_ts=self.thread)
        body, headers = slack.signed(event)
        url = f"{rasa_url}/webhooks/slack/webhook"
        async with http.post(url, data=body, headers=headers) as answer:
            answered = await answer.text()
            assert answer.status == 200, f"slack webhook answered {answer.status}: {answered}"

    def mine(self, call: Call) -> bool:
        return call.recipient == SUPPORT_CHANNEL and call.param("thread_ts") == self.thread

    def text_of(self, call: Call) -> Optional[str]:
        text = call.param("text")
        return text if isinstance(text, str) and not call.param("blocks") else None

    def image_url_of(self, call: Call) -> Optional[str]:
        blocks = call.param("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        for block in blocks or []:
            if isinstance(block, dict) and block.get("type") == "image":
                return str(block.get("image_url"))
        return None


class TwilioCustomer(FakeCustomer):
    """A customer writing to the business's WhatsApp number (Rasa's ``twilio`` channel), or
    to its SMS number (the same channel as ``twilio_sms``: tests/channel_apis/sms.py)."""

    send_methods = frozenset({"Messages.create"})
    api: twilio.TwilioApi

    def __init__(self, api: twilio.TwilioApi, whatsapp: bool) -> None:
        self.api = api
        self.channel = "twilio" if whatsapp else "twilio_sms"
        self.whatsapp = whatsapp
        # WhatsApp refuses outside its 24-hour window; an SMS to a customer who sent STOP.
        self.refusal = twilio.OUTSIDE_WINDOW if whatsapp else twilio.UNSUBSCRIBED
        number = "+1555" + _digits(7)
        self.conversation_id = f"whatsapp:{number}" if whatsapp else number
        self.business_number = twilio.WHATSAPP_NUMBER if whatsapp else twilio.SMS_NUMBER

    @property
    def credentials_key(self) -> str:
        return "twilio" if self.whatsapp else "tests.channel_apis.sms.TwilioSmsInput"

    def credentials(self) -> Dict[str, Any]:
        return {
            "account_sid": twilio.ACCOUNT_SID,
            "auth_token": twilio.AUTH_TOKEN,
            "twilio_number": self.business_number,
        }

    async def say(self, http: aiohttp.ClientSession, rasa_url: str, text: str) -> None:
        form = twilio.inbound_message(
            self.conversation_id, text, to=self.business_number, message_sid="SM" + uuid.uuid4().hex
        )
        url = f"{rasa_url}/webhooks/{self.channel}/webhook"
        async with http.post(url, data=form) as answer:
            answered = await answer.text()
            assert answer.status == 204, f"twilio webhook answered {answer.status}: {answered}"

    def mine(self, call: Call) -> bool:
        return call.recipient == self.conversation_id and call.form.get("From") == (
            self.business_number
        )

    def text_of(self, call: Call) -> Optional[str]:
        body = call.form.get("Body")
        return body or None

    def image_url_of(self, call: Call) -> Optional[str]:
        media = call.form.getall("MediaUrl", [])
        return str(media[0]) if media else None

    def sid_of_text(self, fragment: str) -> str:
        """The MessageSid Twilio gave the message to this customer that holds ``fragment``."""
        messages = self.api.messages
        for sid, message in list(messages.items()):
            if message["to"] == self.conversation_id and fragment in str(message["body"]):
                return str(sid)
        raise AssertionError(f"no message with {fragment!r} to {self.conversation_id}")


class TeamsCustomer(FakeCustomer):
    channel = "botframework"
    api: botframework.BotFrameworkApi
    send_methods = frozenset({"activities"})
    refusal = botframework.NOT_IN_ROSTER

    def __init__(self, api: botframework.BotFrameworkApi) -> None:
        self.api = api
        self.user = f"29:1{_upper(12)}"
        self.teams_conversation = f"a:1{_upper(16)}"
        self.conversation_id = self.user  # Rasa's sender id is the activity's from.id

    @property
    def recipient(self) -> str:
        return self.teams_conversation

    def credentials(self) -> Dict[str, Any]:
        return {"app_id": botframework.APP_ID, "app_password": botframework.APP_PASSWORD}

    async def say(self, http: aiohttp.ClientSession, rasa_url: str, text: str) -> None:
        activity, headers = self.api.inbound_activity(text, self.teams_conversation, self.user)
        url = f"{rasa_url}/webhooks/botframework/webhook"
        async with http.post(url, json=activity, headers=headers) as answer:
            answered = await answer.text()
            assert answer.status == 200, (
                f"botframework webhook answered {answer.status}: {answered}"
            )

    def mine(self, call: Call) -> bool:
        return call.recipient == self.teams_conversation

    def text_of(self, call: Call) -> Optional[str]:
        if not isinstance(call.json, dict) or call.json.get("type") != "message":
            return None
        text = call.json.get("text")
        return text if isinstance(text, str) and text else None

    def image_url_of(self, call: Call) -> Optional[str]:
        attachments = call.json.get("attachments") if isinstance(call.json, dict) else None
        for attachment in attachments or []:
            for image in (attachment.get("content") or {}).get("images") or []:
                return str(image.get("url"))
        return None

    def shows_typing(self, call: Call) -> bool:
        return isinstance(call.json, dict) and call.json.get("type") == "typing"
