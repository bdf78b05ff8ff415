"""A handoff step happened: one structured log line, and the metric it moves.

Each step of a handoff (requested, chat opened, no agent, relay started, a
customer turn relayed, the agent's first reply, ended with its outcome) and each
failure on the way is one call here, so a call site stays one line and the log
and the metrics (metrics.py) cannot tell different stories.

The line goes to the logger ``connectors.omnidesk.handoff_events``, with the
conversation id and the chat id, in the form ``log_format`` picks:

- ``text``: ``handoff step=relay_started conversation_id=... chat_session_id=... channel=socketio``
- ``json``: ``{"event": "handoff", "step": "relay_started", "conversation_id": ..., ...}``

A customer's message text is left out unless ``log_message_text`` is on. No
secret is ever passed here; the channel puts the logger under its secret filter
too (channel/rasa_compat.py). The prose lines of the other loggers keep their
wording; these lines come beside them.
"""

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

from connectors.omnidesk import metrics

LOGGER_NAME = "connectors.omnidesk.handoff_events"
logger = logging.getLogger(LOGGER_NAME)

LOG_FORMATS = ("text", "json")

# The steps, as the lines name them.
REQUESTED = "requested"
CHAT_OPENED = "chat_opened"
RELAY_STARTED = "relay_started"
CUSTOMER_TURN_RELAYED = "customer_turn_relayed"
AGENT_FIRST_REPLY = "agent_first_reply"
ENDED = "ended"
FAILURE = "failure"

_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+-]+")


@dataclass
class LineOptions:
    """How the lines are written; one per process, set from the settings at start."""

    log_format: str = "text"
    log_message_text: bool = False


_options = LineOptions()


def configure(log_format: str, log_message_text: bool) -> None:
    """Take the settings' ``log_format`` and ``log_message_text`` (the channel and the action call it)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    _options.log_format = log_format
    _options.log_message_text = log_message_text


def options() -> LineOptions:
    return LineOptions(_options.log_format, _options.log_message_text)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    if _PLAIN.fullmatch(text):
        return text
    # Quoted as JSON: a space, '=', a quote or a line break cannot fake another key.
    return json.dumps(text, ensure_ascii=False)


def format_line(step: str, fields: Dict[str, Any], log_format: str) -> str:
    shown = {key: value for key, value in fields.items() if value is not None}
    if log_format == "json":
        return json.dumps({"event": "handoff", "step": step, **shown}, ensure_ascii=False)
    pairs = " ".join(f"{key}={_text_value(value)}" for key, value in shown.items())
    return f"handoff step={step} {pairs}".rstrip()


def _line(level: int, step: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_line(step, fields, _options.log_format))


def _message_text(text: Optional[str]) -> Optional[str]:
    return text if _options.log_message_text else None


def _error_text(error: Optional[BaseException]) -> Optional[str]:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"


# -- the steps -----------------------------------------------------------------------


def requested(conversation_id: str, reason: str, channel: Optional[str] = None) -> None:
    """The bot escalates: the action server begins a handoff."""
    metrics.handoff_started(reason)
    _line(
        logging.INFO,
        REQUESTED,
        conversation_id=conversation_id,
        chat_session_id=None,
        reason=metrics.fold(reason, metrics.HANDOFF_REASONS),
        channel=channel,
    )


def chat_opened(conversation_id: str, chat_session_id: str, ticket_id: Optional[int]) -> None:
    """Omnidesk accepted the first chat message: an agent will see the chat."""
    _line(
        logging.INFO,
        CHAT_OPENED,
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        ticket_id=ticket_id,
    )


def relay_started(conversation_id: str, chat_session_id: str, channel: str) -> None:
    """The channel registered the handoff: the customer's turns go to the agent."""
    _line(
        logging.INFO,
        RELAY_STARTED,
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        channel=channel,
    )


def customer_turn_relayed(
    conversation_id: str, chat_session_id: str, message_number: Optional[int], text: str
) -> None:
    """One line per message, so at DEBUG as Rasa logs its own per-message lines.

    At INFO it went through Rasa's log handler on every relayed turn and added a
    tenth to a relayed turn's latency (docs/benchmarks.md); the handoff's steps
    stay at INFO, and ``rasa run --debug`` shows these too.
    """
    metrics.customer_turn_relayed()
    _line(
        logging.DEBUG,
        CUSTOMER_TURN_RELAYED,
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        message_number=message_number,
        text=_message_text(text),
    )


def agent_first_reply(conversation_id: str, chat_session_id: str, seconds: float) -> None:
    metrics.first_agent_reply(seconds)
    _line(
        logging.INFO,
        AGENT_FIRST_REPLY,
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        seconds=round(seconds, 3),
    )


def ended(
    conversation_id: str,
    chat_session_id: Optional[str],
    outcome: str,
    error: Optional[BaseException] = None,
) -> None:
    """The handoff ended: by the agent, the customer, a timeout; or no agent, or it failed."""
    metrics.handoff_ended(outcome)
    _line(
        logging.ERROR if outcome == "failed" else logging.INFO,
        ENDED,
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        outcome=outcome,
        error=_error_text(error),
    )


def failure(
    what: str,
    conversation_id: str,
    chat_session_id: Optional[str],
    error: Optional[BaseException] = None,
    **details: Any,
) -> None:
    """A step that failed on the way; ``what`` is a short fixed name (``customer_message``)."""
    _line(
        logging.ERROR,
        FAILURE,
        what=what,
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        error=_error_text(error),
        **details,
    )
