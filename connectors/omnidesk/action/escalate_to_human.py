"""action_escalate_to_human: hand the conversation to a live agent in Omnidesk.

0. A turn that no OmnideskInput handed to the bot (``rasa shell``, a channel
   listed beside it, ``rest`` among them) is refused with a response: no Omnidesk call at all.
1. The history goes to Omnidesk's chatbot log (a ticket, so someone follows up
   whatever happens next).
2. requestChatConfig says whether an agent is online.
3. Online: the first chat message opens the Omnidesk chat, and the control
   payload tells the channel to relay this conversation to it from now on.
   Offline: the customer is told no one is available now; the ticket stays.
   Omnidesk unreachable or refusing: the customer is told, the cause logged.

The settings are the same OMNIDESK_* variables as the channel's. They are
checked when the action server imports this module, so a missing or malformed
one stops ``rasa run actions`` at start-up with a message naming it; each
escalation reads them again (cheap), so a test can point them at its own
sandbox.
"""

import logging
import os
from typing import Any, Dict, List, Optional, Set

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from connectors.omnidesk import handoff, handoff_events, metrics
from connectors.omnidesk.action.escalation import Escalation, build_escalation
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.settings import OmnideskSettings, SettingsError

logger = logging.getLogger(__name__)

ACTION_NAME = "action_escalate_to_human"

UTTER_CONNECTED = "utter_handoff_connected"
UTTER_NO_AGENTS = "utter_handoff_no_agents"
UTTER_FAILED = "utter_handoff_failed"
UTTER_ALREADY_ACTIVE = "utter_handoff_already_active"
UTTER_NOT_SERVED = "utter_omnidesk_channel_not_served"

# Input channels already warned about in this process; the warning says the fix
# once per channel, later refusals log one short line each.
_warned_channels: Set[str] = set()
MAX_WARNED_CHANNELS = 64

FIRST_MESSAGE_NUMBER = 1

# What Rasa puts into the metadata of a turn it makes itself (trigger_intent,
# reminders): rasa.shared.core.constants.IS_EXTERNAL.
EXTERNAL_KEY = "is_external"


class ActionServerSettingsError(ImportError):
    """The OMNIDESK_* settings are missing or malformed when the action server starts.

    An ImportError, because that is what makes rasa_sdk's action server log the
    message and stop at start-up instead of serving an action that cannot work.
    """


def check_settings_at_start() -> OmnideskSettings:
    try:
        settings = OmnideskSettings.from_env()
    except SettingsError as error:
        raise ActionServerSettingsError(
            f"{ACTION_NAME} cannot start: {error}. Set the OMNIDESK_* variables for "
            "`rasa run actions` as for `rasa run` (see docs/configuration.md)."
        ) from error
    handoff_events.configure(settings.log_format, settings.log_message_text)
    serve_metrics(settings)
    return settings


def serve_metrics(settings: OmnideskSettings) -> None:
    """The action server's metrics on ``action_metrics_port``, when set (docs/metrics.md).

    rasa_sdk builds its own Sanic app with no hook for another route, so they get
    a small server of their own, on the interface rasa_sdk itself binds
    (``SANIC_HOST``, else all), started in the process that runs the actions.
    """
    if settings.action_metrics_port is None or not _runs_the_actions():
        return
    host = os.environ.get("SANIC_HOST") or "0.0.0.0"  # noqa: S104 -- as rasa_sdk binds
    try:
        metrics.serve_action_metrics(settings.action_metrics_port, host)
    except OSError as error:
        problem = (
            f"action_metrics_port (OMNIDESK_ACTION_METRICS_PORT) {settings.action_metrics_port} "
            f"on {host} cannot be served: {error}"
        )
        if os.environ.get(SANIC_WORKER_VARIABLE):
            # One worker of several got the port first; this one's counts go unserved.
            logger.error("%s; this worker's metrics are not served (run one worker).", problem)
            return
        raise ActionServerSettingsError(
            f"{ACTION_NAME} cannot start: {problem}. Pick a free port, or unset it to serve "
            "no metrics."
        ) from error


# Sanic 22 and later (Rasa Pro's rasa-sdk) import the actions in a main process
# that only manages workers, then again in each worker, which sets this variable.
SANIC_WORKER_VARIABLE = "SANIC_WORKER_NAME"


def _runs_the_actions() -> bool:
    """Whether this process serves the actions: a Sanic worker, or Sanic 21's one process."""
    if os.environ.get(SANIC_WORKER_VARIABLE):
        return True
    import sanic

    major = str(getattr(sanic, "__version__", "0")).split(".", 1)[0]
    return major.isdigit() and int(major) < 22


check_settings_at_start()


class ActionEscalateToHuman(Action):  # type: ignore[misc]  # rasa_sdk is not type-checked here
    """Push the history to Omnidesk and, when an agent is online, open the chat."""

    def name(self) -> str:
        return ACTION_NAME

    async def run(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: Dict[str, Any],
    ) -> List[Dict[str, Any]]:
        conversation = tracker.sender_id
        if not _channel_serves(tracker):
            return _not_served(dispatcher, tracker)
        if _already_with_agent(tracker):
            logger.info(
                "handoff already_with_agent conversation=%s chat_session_id=%s",
                conversation,
                tracker.get_slot(handoff.SLOT_CHAT_SESSION_ID),
            )
            dispatcher.utter_message(response=UTTER_ALREADY_ACTIVE)
            return [_outcome(handoff.HandoffOutcome.ALREADY_WITH_AGENT)]

        escalation = build_escalation(tracker.events, tracker.slots, tracker.latest_message)
        logger.info(
            "handoff connecting conversation=%s reason=%s", conversation, escalation.reason.value
        )
        handoff_events.requested(conversation, escalation.reason.value, escalation.channel)
        try:
            settings = OmnideskSettings.from_env()
            handoff_events.configure(settings.log_format, settings.log_message_text)
            chat_session_id = await _escalate(settings, escalation, conversation)
        except (SettingsError, OmnideskError) as error:
            logger.error("handoff failed conversation=%s: %s", conversation, error)
            handoff_events.ended(conversation, None, handoff.HandoffOutcome.FAILED.value, error)
            return _failed(dispatcher)

        if chat_session_id is None:
            logger.info("handoff no_agent conversation=%s", conversation)
            handoff_events.ended(conversation, None, handoff.HandoffOutcome.NO_AGENT.value)
            dispatcher.utter_message(response=UTTER_NO_AGENTS)
            return [
                SlotSet(handoff.SLOT_HANDOFF_ACTIVE, False),
                _outcome(handoff.HandoffOutcome.NO_AGENT),
            ]

        logger.info(
            "handoff started conversation=%s chat_session_id=%s", conversation, chat_session_id
        )
        started = handoff.HandoffStarted(
            chat_session_id=chat_session_id, next_message_number=FIRST_MESSAGE_NUMBER + 1
        )
        dispatcher.utter_message(json_message=started.to_json_message())
        dispatcher.utter_message(response=UTTER_CONNECTED)
        return [
            SlotSet(handoff.SLOT_HANDOFF_ACTIVE, True),
            SlotSet(handoff.SLOT_CHAT_SESSION_ID, chat_session_id),
            _outcome(handoff.HandoffOutcome.STARTED),
        ]


async def _escalate(
    settings: OmnideskSettings, escalation: Escalation, conversation: str
) -> Optional[str]:
    """Make the Omnidesk calls. The new chatSessionID, or None when no agent is online."""
    customer = escalation.customer
    async with OmnideskClient(settings) as client:
        log = await client.create_chatbot_log(
            message=escalation.transcript,
            subject=escalation.subject,
            from_address=customer.from_address,
        )
        logger.info(
            "handoff chatbot log stored conversation=%s ticket_id=%s", conversation, log.ticket_id
        )
        config = await client.request_chat_config()
        if not config.agents_available:
            return None
        chat_session_id = handoff.new_chat_session_id(conversation)
        await client.notify_user_new_chat_message(
            chat_session_id=chat_session_id,
            message=escalation.first_chat_message(log.ticket_id),
            message_number=FIRST_MESSAGE_NUMBER,
            customer_name=customer.name,
            email_address=customer.email,
            phone_number=customer.phone,
            url=escalation.page_url,
        )
    handoff_events.chat_opened(conversation, chat_session_id, log.ticket_id)
    return chat_session_id


def _latest_metadata(tracker: Tracker) -> Any:
    latest = tracker.latest_message if isinstance(tracker.latest_message, dict) else {}
    return latest.get("metadata")


def _channel_serves(tracker: Tracker) -> bool:
    """Whether an OmnideskInput handed the latest turn to the bot.

    Every turn a wrapped channel hands to the bot carries the channel's mark
    (metadata ``omnidesk.with_agent``, see ``incoming.mark_with_bot``). Without
    it the turn came through a channel the connector does not serve: the
    control payload would reach the customer as raw JSON and the agent's
    replies would find no one. The mark is the channel's own word, so the
    action server needs no copy of Rasa's credentials.yml.
    """
    metadata = _latest_metadata(tracker)
    if handoff.channel_says_with_agent(metadata) is not None:
        return True
    if isinstance(metadata, dict) and metadata.get(EXTERNAL_KEY) is True:
        # trigger_intent or a reminder: Rasa makes a turn of its own, unmarked,
        # on the conversation's latest input channel. That channel is the one of
        # the latest turn the customer sent, marked by the connector if it
        # served it (a relayed turn carries the connector's own metadata too).
        for event in reversed(tracker.events):
            if not isinstance(event, dict) or event.get("event") != "user":
                continue
            earlier = event.get("metadata")
            if isinstance(earlier, dict) and earlier.get(EXTERNAL_KEY) is True:
                continue
            return isinstance(earlier, dict) and isinstance(earlier.get(handoff.METADATA_KEY), dict)
    return False


def _not_served(dispatcher: CollectingDispatcher, tracker: Tracker) -> List[EventType]:
    """Refuse the escalation: no Omnidesk call, no chat left waiting for an agent."""
    channel = str(tracker.get_latest_input_channel() or "unknown")
    if channel not in _warned_channels and len(_warned_channels) < MAX_WARNED_CHANNELS:
        _warned_channels.add(channel)
        logger.warning(
            "handoff channel_not_served conversation=%s channel=%s: this turn did not come "
            "through connectors.omnidesk.OmnideskInput, so no Omnidesk chat is opened. "
            "Move the channel under customer_channels of OmnideskInput in credentials.yml "
            "(rasa shell cannot be served; see docs/troubleshooting.md).",
            tracker.sender_id,
            channel,
        )
    else:
        logger.info(
            "handoff channel_not_served conversation=%s channel=%s", tracker.sender_id, channel
        )
    dispatcher.utter_message(response=UTTER_NOT_SERVED)
    return [
        SlotSet(handoff.SLOT_HANDOFF_ACTIVE, False),
        _outcome(handoff.HandoffOutcome.CHANNEL_NOT_SERVED),
    ]


def _already_with_agent(tracker: Tracker) -> bool:
    """Whether the conversation is with an agent now: the channel's word over the slot.

    The channel marks every turn it hands to the bot (metadata
    ``omnidesk.with_agent``); a turn it hands to the bot is by definition not
    with an agent. The ``handoff_active`` slot can outlive a handoff, and
    trusting it would lock the customer out of agents for good. An unmarked
    turn gets here only when Rasa made it (trigger_intent, a reminder): the
    channel has said nothing of it, so the slot decides.
    """
    channel_view = handoff.channel_says_with_agent(_latest_metadata(tracker))
    slot = tracker.get_slot(handoff.SLOT_HANDOFF_ACTIVE) is True
    if channel_view is None:
        return slot
    if slot and not channel_view:
        logger.warning(
            "handoff slot_stale conversation=%s: the slot says with an agent, the channel "
            "says not; escalating",
            tracker.sender_id,
        )
    return channel_view


def _outcome(outcome: handoff.HandoffOutcome) -> EventType:
    return SlotSet(handoff.SLOT_HANDOFF_OUTCOME, outcome.value)


def _failed(dispatcher: CollectingDispatcher) -> List[EventType]:
    dispatcher.utter_message(response=UTTER_FAILED)
    return [SlotSet(handoff.SLOT_HANDOFF_ACTIVE, False), _outcome(handoff.HandoffOutcome.FAILED)]
