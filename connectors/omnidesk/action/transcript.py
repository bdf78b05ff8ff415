"""A markdown transcript of a conversation, for the agent who takes it over.

Pure functions over the tracker's event dicts (the shape rasa_sdk's
``Tracker.events`` and Rasa's ``tracker.current_state()`` both give), so the
action server and the channel can render the same history without importing
rasa. The agent reads the result at a glance: who said what and when, the
buttons the customer chose, what the bot understood, the slots worth knowing.
Everything the customer (or anyone) typed is markdown-escaped, so a message
can't forge a line of the transcript or inject a link.
"""

import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from connectors.omnidesk import handoff
from connectors.omnidesk.rules import valid_text

# Slots that describe the handoff itself or Rasa's bookkeeping: noise for an agent.
INTERNAL_SLOTS: FrozenSet[str] = frozenset(
    {
        handoff.SLOT_HANDOFF_ACTIVE,
        handoff.SLOT_CHAT_SESSION_ID,
        handoff.SLOT_HANDOFF_OUTCOME,
        "requested_slot",
        "session_started_metadata",
    }
)

# Intents that say nothing an agent needs.
NOISE_INTENTS: FrozenSet[str] = frozenset({"session_start", "restart", "back"})

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")
_LINE_START_SPECIAL = re.compile(r"^(\s*)([-=>]|\d+\.)")


def escape_markdown(text: str) -> str:
    """Escape ``text`` so that markdown shows it literally.

    Inline markup characters are backslash-escaped everywhere; list, heading and
    quote markers only where markdown reads them, at the start of a line.
    """
    escaped_lines = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _MARKDOWN_SPECIAL.sub(r"\\\1", line)
        line = _LINE_START_SPECIAL.sub(
            lambda match: match.group(1) + _escape_marker(match.group(2)), line
        )
        escaped_lines.append(line)
    # Two trailing spaces make a hard line break inside one markdown paragraph.
    return "  \n".join(escaped_lines)


def _escape_marker(marker: str) -> str:
    if marker[-1] == ".":
        return marker[:-1] + "\\."
    return "\\" + marker


@dataclass(frozen=True)
class TranscriptOptions:
    """What to render. The defaults suit a chatbot-log ticket."""

    # Slots not shown in the "Details" section.
    hidden_slots: FrozenSet[str] = INTERNAL_SLOTS
    # Show the intent (and its confidence) the bot read into each customer message.
    show_intents: bool = True
    # Keep the transcript under this many characters by dropping the oldest lines.
    max_chars: Optional[int] = None
    # A title line; None for none.
    title: Optional[str] = "Conversation with the chatbot"


@dataclass
class _Line:
    timestamp: Optional[float]
    text: str


@dataclass
class _State:
    lines: List[_Line] = field(default_factory=list)
    last_buttons: Dict[str, str] = field(default_factory=dict)
    channel: Optional[str] = None
    first_timestamp: Optional[float] = None


def render_transcript(
    events: Sequence[Mapping[str, Any]],
    slots: Optional[Mapping[str, Any]] = None,
    options: TranscriptOptions = TranscriptOptions(),
) -> str:
    """Render ``events`` (and the current ``slots``) as a markdown transcript."""
    state = _State()
    for event in events:
        _render_event(event, state, options)

    header: List[str] = []
    if options.title:
        header.append(f"**{escape_markdown(options.title)}**")
        header.append("")
    if state.channel:
        header.append(f"- Channel: {escape_markdown(state.channel)}")
    if state.first_timestamp is not None:
        header.append(f"- Started: {_format_datetime(state.first_timestamp)}")
    shown_slots = _slots_worth_knowing(slots or {}, options.hidden_slots)
    if header and header[-1] != "":
        header.append("")

    body = [_format_line(line) for line in state.lines]
    if not body:
        body = ["_(no messages yet)_"]

    footer: List[str] = []
    if shown_slots:
        footer.append("")
        footer.append("**Details**")
        footer.append("")
        footer.extend(
            f"- {escape_markdown(name)}: {escape_markdown(_format_value(value))}"
            for name, value in shown_slots
        )

    if options.max_chars is not None:
        body = _fit(header, body, footer, options.max_chars)
    # A tracker may already hold a lone surrogate (from before the channel
    # repaired text at its edge): it is shown as U+FFFD, never sent as is.
    return valid_text("\n".join(header + body + footer).strip() + "\n")


def _fit(header: List[str], body: List[str], footer: List[str], max_chars: int) -> List[str]:
    """Drop the oldest body lines until the whole fits in ``max_chars``."""

    def size(lines: Iterable[str]) -> int:
        return sum(len(line) + 1 for line in lines)

    fixed = size(header) + size(footer)
    kept = list(body)
    dropped = 0
    notice = ""
    while kept and fixed + size(kept) + len(notice) + 1 > max_chars:
        kept.pop(0)
        dropped += 1
        notice = f"_({dropped} earlier lines left out)_"
    if dropped:
        kept.insert(0, notice)
    return kept


def _render_event(event: Mapping[str, Any], state: _State, options: TranscriptOptions) -> None:
    kind = event.get("event")
    timestamp = _timestamp(event.get("timestamp"))
    if kind == "user":
        if state.first_timestamp is None and timestamp is not None:
            state.first_timestamp = timestamp
        channel = event.get("input_channel")
        if isinstance(channel, str) and channel:
            state.channel = channel
        _render_user(event, timestamp, state, options)
    elif kind == "bot":
        _render_bot(event, timestamp, state)
    elif kind == "session_started" and state.lines:
        state.lines.append(_Line(timestamp, "_— new session —_"))


def _role(event: Mapping[str, Any]) -> Optional[str]:
    metadata = event.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    omnidesk = metadata.get("omnidesk")
    if not isinstance(omnidesk, Mapping):
        return None
    role = omnidesk.get("role")
    return role if isinstance(role, str) else None


def _agent_name(event: Mapping[str, Any]) -> Optional[str]:
    metadata = event.get("metadata")
    if isinstance(metadata, Mapping):
        omnidesk = metadata.get("omnidesk")
        if isinstance(omnidesk, Mapping):
            name = omnidesk.get("agent_name") or omnidesk.get("name")
            if isinstance(name, str) and name.strip():
                return name.strip()
    return None


def _render_user(
    event: Mapping[str, Any],
    timestamp: Optional[float],
    state: _State,
    options: TranscriptOptions,
) -> None:
    text = event.get("text")
    text = text if isinstance(text, str) else ""
    parse_data = event.get("parse_data")
    parse_data = parse_data if isinstance(parse_data, Mapping) else {}
    intent = parse_data.get("intent")
    intent_name = intent.get("name") if isinstance(intent, Mapping) else None
    if intent_name in NOISE_INTENTS:
        return

    if _role(event) == "customer":
        # A turn relayed to the agent: the bot did not read it.
        state.lines.append(_Line(timestamp, f"**Customer:** {escape_markdown(text)}"))
        return

    button_title = state.last_buttons.get(text.strip()) if text else None
    state.last_buttons = {}
    if button_title is not None:
        line = f"**Customer** chose the button **{escape_markdown(button_title)}**"
    elif text:
        line = f"**Customer:** {escape_markdown(text)}"
    else:
        line = "**Customer:** _(empty message)_"

    if options.show_intents and isinstance(intent_name, str) and intent_name:
        understood = f"intent {escape_markdown(intent_name)}"
        confidence = intent.get("confidence") if isinstance(intent, Mapping) else None
        if isinstance(confidence, (int, float)) and not isinstance(confidence, bool):
            understood += f" {float(confidence):.2f}"
        entities = _entities(parse_data.get("entities"))
        if entities:
            understood += "; " + ", ".join(entities)
        line += f" _({understood})_"
    state.lines.append(_Line(timestamp, line))


def _entities(raw: Any) -> List[str]:
    if not isinstance(raw, list):
        return []
    shown = []
    for entity in raw:
        if not isinstance(entity, Mapping):
            continue
        name = entity.get("entity")
        if not isinstance(name, str):
            continue
        value = entity.get("value")
        shown.append(f"{escape_markdown(name)}={escape_markdown(_format_value(value))}")
    return shown


def _render_bot(event: Mapping[str, Any], timestamp: Optional[float], state: _State) -> None:
    data = event.get("data")
    data = data if isinstance(data, Mapping) else {}
    custom = data.get("custom")
    if handoff.is_control_payload(custom if isinstance(custom, Mapping) else None):
        state.lines.append(_Line(timestamp, "_— handed over to a live agent —_"))
        return

    speaker = "Bot"
    if _role(event) == "agent":
        name = _agent_name(event)
        speaker = f"Agent {escape_markdown(name)}" if name else "Agent"

    parts: List[str] = []
    text = event.get("text")
    if isinstance(text, str) and text:
        parts.append(escape_markdown(text))
    shown: List[Any] = []
    for key, label in (("image", "image"), ("attachment", "attachment")):
        value = data.get(key)
        if not value or value in shown:
            # Rasa copies an image into `attachment` when the response has none
            # (rasa.core.actions.action.create_bot_utterance): one picture, shown once.
            continue
        shown.append(value)
        if isinstance(value, str):
            parts.append(f"_({label}: {escape_markdown(value)})_")
        elif isinstance(value, Mapping):
            parts.append(f"_({label})_")
    if custom is not None and not parts:
        parts.append("_(custom message)_")

    buttons = data.get("buttons") or data.get("quick_replies")
    state.last_buttons = {}
    if isinstance(buttons, list):
        titles = []
        for button in buttons:
            if not isinstance(button, Mapping):
                continue
            title = button.get("title")
            payload = button.get("payload")
            if isinstance(title, str):
                titles.append(f"[{escape_markdown(title)}]")
                if isinstance(payload, str):
                    state.last_buttons[payload.strip()] = title
        if titles:
            parts.append("buttons: " + " ".join(titles))
    if not parts:
        return
    state.lines.append(_Line(timestamp, f"**{speaker}:** " + "  \n".join(parts)))


def _slots_worth_knowing(slots: Mapping[str, Any], hidden: FrozenSet[str]) -> List[Tuple[str, Any]]:
    shown: List[Tuple[str, Any]] = []
    for name in sorted(slots):
        value = slots[name]
        if name in hidden or value is None or value == "" or value == []:
            continue
        shown.append((name, value))
    return shown


def _format_line(line: _Line) -> str:
    if line.timestamp is None:
        return f"- {line.text}"
    return f"- {_format_time(line.timestamp)} {line.text}"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_format_value(item) for item in value)
    return str(value)


def _timestamp(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _format_time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).strftime("%H:%M:%S")


def _format_datetime(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
