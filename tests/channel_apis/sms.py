"""Twilio's SMS number beside its WhatsApp number, in one Rasa.

Rasa's twilio channel answers from one ``twilio_number``: an SMS number, or a
WhatsApp sender (``whatsapp:+...``). A business on both wraps the channel twice;
Rasa names channels (and their routes) by ``name()``, so the second is Rasa's
own channel under a name of its own, ``twilio_sms``, at
/webhooks/twilio_sms/webhook. docs/channel.md shows it.
"""

from typing import Any, Awaitable, Callable

from rasa.core.channels.channel import UserMessage
from rasa.core.channels.twilio import TwilioInput
from sanic import Blueprint


class TwilioSmsInput(TwilioInput):  # type: ignore[misc]
    """Rasa's twilio channel, named ``twilio_sms``."""

    @classmethod
    def name(cls) -> str:
        return "twilio_sms"

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        blueprint: Blueprint = super().blueprint(on_new_message)
        # Sanic takes each blueprint name once per app; Rasa's is "twilio_webhook".
        blueprint.name = "twilio_sms_webhook"
        return blueprint
