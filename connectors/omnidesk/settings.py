"""The OMNIDESK_* settings, read and validated once at start-up.

Both processes build the same ``OmnideskSettings``: ``rasa run`` from the
channel's credentials (``from_credentials``), ``rasa run actions`` from the
environment (``from_env``). A credentials key is the variable's name without the
``OMNIDESK_`` prefix, in lower case, and wins over the variable. Every missing or
malformed setting is reported at once, in one ``SettingsError`` that names each
setting (credentials key and variable) and shows a valid value, so a bad
configuration fails at start-up rather than at the first customer turn.

Each setting is declared once, as a field of ``OmnideskSettings`` whose
``setting(...)`` holds its default and its rule (parser, a valid value, whether it
is secret); reading walks the fields in order, and a field without a rule stops
the import.

Tokens and secrets are held in ``Secret``: they never show in a repr, a str or an
error message. docs/configuration.md lists every setting.
"""

import dataclasses
import difflib
import functools
import hashlib
import hmac
import json
import math
import os
import pathlib
import re
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)
from urllib.parse import urlsplit, urlunsplit

from connectors.omnidesk import rules
from connectors.omnidesk.redis_connection import RedisConnection, RedisSettingsError

ENV_PREFIX = "OMNIDESK_"

# Rasa mounts a channel's blueprint at /webhooks/<channel name>; the hookpoints
# live below it, under the secret path segment.
HOOKPOINT_BASE_PATH = "/webhooks/omnidesk/hook"

# Keys of the channel's credentials that belong to the channel, not to these
# settings. ``from_credentials`` skips them; a caller can add its own with ``ignore``.
RESERVED_CREDENTIALS_KEYS: Tuple[str, ...] = ("customer_channels",)

# omnidesk-api.txt puts notifyUserEndChat under /message/; Omnidesk's published
# specification puts it under /chat/. We follow the former and let it be changed.
DEFAULT_END_CHAT_PATH = "/api/v2/message/notifyUserEndChat"
SPEC_END_CHAT_PATH = "/api/v2/chat/notifyUserEndChat"

DEFAULT_ALLOWED_UPLOAD_TYPES: Tuple[str, ...] = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
)

_MASK = "***"

# Per-chat capabilities derived from the hookpoint secret (see docs/security.md).
# Each use has its own context, so a hookpoint token is no customer token.
HOOKPOINT_TOKEN_LENGTH = 40
HOOKPOINT_TOKEN_CONTEXT = b"omnidesk-hookpoint:"
CUSTOMER_TOKEN_CONTEXT = b"omnidesk-customer:"
STREAM_TICKET_CONTEXT = b"omnidesk-stream:"


class Secret:
    """A token or secret: compared in constant time, never shown.

    ``reveal()`` is the one way to the value, so every place that sends a
    secret says so.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        # Pickling keeps the value (a settings object may cross a process
        # boundary); only its display is masked.
        return (Secret, (self._value,))


@dataclass(frozen=True)
class SettingProblem:
    """One missing or malformed setting: which one, what is wrong, what would do.

    ``key`` is the credentials key; ``env_var`` the variable, None for a
    credentials key that is no setting at all.
    """

    key: str
    env_var: Optional[str]
    problem: str
    example: str

    def __str__(self) -> str:
        where = f"{self.key} ({self.env_var})" if self.env_var else f"credentials key '{self.key}'"
        advice = f"; a valid value: {self.example}" if self.example else ""
        return f"{where} {self.problem}{advice}"


class SettingsError(ValueError):
    """Missing or malformed Omnidesk settings. Names every setting that is wrong."""

    def __init__(self, problems: Sequence[SettingProblem]) -> None:
        self.problems: Tuple[SettingProblem, ...] = tuple(problems)
        lines = [str(problem) for problem in self.problems]
        if len(lines) == 1:
            message = f"Omnidesk setting {lines[0]}"
        else:
            message = "Omnidesk settings are invalid:\n" + "\n".join(f"- {line}" for line in lines)
        super().__init__(message)

    @property
    def keys(self) -> Tuple[str, ...]:
        """The credentials keys of the settings that are wrong, in field order."""
        return tuple(problem.key for problem in self.problems)


def derive_chat_token(secret: str, context: bytes, chat_session_id: str) -> str:
    """A per-chat capability: the first 40 hex digits of HMAC-SHA256(secret, context + id)."""
    digest = hmac.new(
        secret.encode("utf-8"), context + chat_session_id.encode("utf-8"), hashlib.sha256
    )
    return digest.hexdigest()[:HOOKPOINT_TOKEN_LENGTH]


def env_var_for(key: str) -> str:
    return ENV_PREFIX + key.upper()


# --- parsing ---------------------------------------------------------------


class _Invalid(Exception):
    """A raw value breaks a setting's rule; ``rule`` says so, e.g. 'must be a positive number'."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


def _is_unset(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _text(raw: Any, rule: str) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"{rule} (text, not {type(raw).__name__})")
    return raw.strip()


def _url(raw: Any, rule: str = "must be an http(s) URL without query or fragment") -> str:
    value = _text(raw, rule)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise _Invalid(rule) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(character.isspace() for character in value)
    ):
        raise _Invalid(rule)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _public_url(raw: Any) -> str:
    rule = (
        "must be an http(s) URL of Rasa's server as Omnidesk reaches it, of letters, digits, "
        "'.', ':', '/' and '-' only (chatServer's characters)"
    )
    value = _url(raw, rule)
    pattern = rules.CHAT_SERVER.pattern
    if pattern is not None and not pattern.fullmatch(value):
        raise _Invalid(rule)
    return value


def _token(rule: rules.TextRule) -> Callable[[Any], Secret]:
    def parse(raw: Any) -> Secret:
        value = _text(raw, f"must be {rule.described}, at least {rule.min_length} characters")
        try:
            return Secret(rule.check(value))
        except rules.FieldRuleError as error:
            raise _Invalid(error.rule) from None

    return parse


# A secret of fewer different characters (24 x 'a', 'abab...') is a placeholder
# or a guess away; a random one of 24 characters has about 16.
HOOKPOINT_SECRET_MIN_DISTINCT = 8


def _hookpoint_secret(raw: Any) -> Secret:
    secret = _token(rules.HOOKPOINT_SECRET)(raw)
    if len(set(secret.reveal())) < HOOKPOINT_SECRET_MIN_DISTINCT:
        raise _Invalid(
            f"must be random: at least {HOOKPOINT_SECRET_MIN_DISTINCT} different characters "
            "(a repeated character or a short pattern is refused)"
        )
    return secret


def _api_key(raw: Any) -> Secret:
    rule = "must be printable characters without spaces"
    value = _text(raw, rule)
    if not value.isprintable() or any(character.isspace() for character in value):
        raise _Invalid(rule)
    return Secret(value)


def _plain_text(raw: Any) -> str:
    rule = "must be printable text"
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    value = _text(raw, rule)
    if not value.isprintable():
        raise _Invalid(rule)
    return value


def _path(raw: Any) -> str:
    rule = "must be a URL path starting with '/', without spaces, '?' or '#'"
    value = _text(raw, rule)
    if not value.startswith("/") or re.search(r"[\s?#]", value):
        raise _Invalid(rule)
    return value


def _number(raw: Any, rule: str) -> float:
    if isinstance(raw, bool):
        raise _Invalid(rule)
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid(rule) from None
    else:
        raise _Invalid(rule)
    if not math.isfinite(value):
        raise _Invalid(rule)
    return value


def _positive(raw: Any) -> float:
    rule = "must be a positive number of seconds"
    value = _number(raw, rule)
    if value <= 0:
        raise _Invalid(rule)
    return value


def _non_negative(raw: Any) -> float:
    rule = "must be a number of seconds, 0 or more (0 turns it off)"
    value = _number(raw, rule)
    if value < 0:
        raise _Invalid(rule)
    return value


def _integer(low: int, high: Optional[int], rule: str) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        value = _number(raw, rule)
        if not value.is_integer() or value < low or (high is not None and value > high):
            raise _Invalid(rule)
        return int(value)

    return parse


def _non_empty(raw: Any) -> str:
    return _text(raw, "must be non-empty text")


def _mime_types(raw: Any) -> Tuple[str, ...]:
    rule = "must be a comma-separated list of MIME types such as image/png or image/*"
    if isinstance(raw, str):
        items: List[Any] = raw.split(",")
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise _Invalid(rule)
    types: List[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(rule)
        mime = item.strip().lower()
        if not mime:
            continue
        if not rules.MIME_TYPE.fullmatch(mime):
            raise _Invalid(f"{rule} ({item.strip()!r} is not one)")
        if mime not in types:
            types.append(mime)
    if not types:
        raise _Invalid(rule)
    return tuple(types)


def _files_dir(raw: Any) -> pathlib.Path:
    rule = "must be a directory path"
    value = _text(raw, rule)
    if "\x00" in value:
        raise _Invalid(rule)
    return pathlib.Path(value).expanduser()


def _switchboard_url(raw: Any) -> str:
    rule = "must be memory:// or a Redis URL (redis://host:6379/0, rediss://...)"
    value = _text(raw, rule)
    if value == "memory://":
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise _Invalid(rule) from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise _Invalid(rule)
    _redis_connection(value, "switchboard_url")
    return value


def _redis_connection(raw: Any, key: str) -> RedisConnection:
    """A ``RedisConnection`` from a URL or a block; its problems as one rule naming each key."""
    try:
        return RedisConnection.from_config(raw, setting=key)
    except RedisSettingsError as error:
        problems = "; ".join(f"{key}.{problem}" for problem in error.problems)
        raise _Invalid(f"cannot work: {problems}") from None


def _redis(raw: Any) -> RedisConnection:
    """Rasa Pro's lock store block: a mapping in credentials.yml, a JSON object or a URL in
    the environment."""
    rule = (
        "must be a mapping of Rasa Pro's redis lock store keys (deployment_mode, host, "
        "port, endpoints, ...), in the environment a JSON object of them, or a Redis URL"
    )
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except ValueError as error:
                raise _Invalid(f"{rule}; the JSON object does not parse ({error})") from None
            if not isinstance(raw, dict):
                raise _Invalid(rule)
        elif "://" not in text:
            raise _Invalid(rule)
        else:
            raw = text
    elif not isinstance(raw, Mapping):
        raise _Invalid(f"{rule} (not {type(raw).__name__})")
    return _redis_connection(raw, "redis")


def _show_redis(raw: Any) -> str:
    """A Redis block or URL as given, its passwords masked."""
    if isinstance(raw, str) and raw.strip().startswith("{"):
        try:
            raw = json.loads(raw)
        except ValueError:
            return "a JSON object that does not parse"
    if isinstance(raw, Mapping):
        masked = {
            str(key): _MASK
            if str(key).endswith("password")
            else _mask_url_password(value)
            if isinstance(value, str)
            else value
            for key, value in raw.items()
        }
        return _show(masked)
    return _show_url(raw)


def _redis_url(raw: Any) -> str:
    value = _switchboard_url(raw)
    if value == "memory://":
        raise _Invalid("must be a Redis URL (redis://host:6379/0, rediss://...)")
    return value


def _log_format(raw: Any) -> str:
    rule = "must be text or json"
    value = _text(raw, rule).lower()
    if value not in ("text", "json"):
        raise _Invalid(rule)
    return value


def _boolean(raw: Any) -> bool:
    try:
        return rules.parse_bool("", raw)
    except rules.FieldRuleError as error:
        raise _Invalid(error.rule) from None


_PASSWORD_PARAMETER = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def _mask_url_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    # redis-py also takes the password as a query parameter: ?password=...
    masked_query = _PASSWORD_PARAMETER.sub(rf"\g<1>{_MASK}", parts.query)
    if masked_query != parts.query:
        parts = parts._replace(query=masked_query)
    elif parts.password is None:
        return url
    if parts.password is None:
        return urlunsplit(parts)
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{netloc}"))


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _show_url(raw: Any) -> str:
    return _show(_mask_url_password(raw) if isinstance(raw, str) else raw)


# --- declaring a setting ------------------------------------------------------

# The key of a setting's rule in its dataclass field's metadata.
_RULE = "omnidesk_setting"


@dataclass(frozen=True)
class _Rule:
    """How one setting is read: its parser, a valid value to show, and what it means.

    ``setting()`` puts it in the field's metadata. ``example`` may hold
    ``{default}``, which stands for the field's default. ``at_least`` names an
    earlier setting this one may not be below.
    """

    parse: Callable[[Any], Any]
    example: str
    meaning: str
    secret: bool
    required: bool
    show: Callable[[Any], str]
    at_least: Optional[str]


def setting(
    default: Any = dataclasses.MISSING,
    *,
    parse: Callable[[Any], Any],
    example: str = "{default}",
    meaning: str = "",
    secret: bool = False,
    show: Callable[[Any], str] = _show,
    at_least: Optional[str] = None,
) -> Any:
    """One field of ``OmnideskSettings``: its default and the rule it is read by.

    Without a default the setting is required, and then ``meaning`` and a concrete
    ``example`` must say what to set, for the error that reports it missing.
    """
    required = default is dataclasses.MISSING
    if required and not meaning:
        raise TypeError("a required setting needs a meaning, for the error naming it missing")
    if "{default}" in example and (required or default is None):
        raise TypeError(f"the example {example!r} shows a default the setting does not have")
    rule = _Rule(parse, example, meaning, secret, required, show, at_least)
    return dataclasses.field(default=default, metadata={_RULE: rule})


def _default_text(value: Any) -> str:
    """A setting's default as one would write it in an environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


# --- the settings -------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class OmnideskSettings:
    """Everything both processes need to talk to Omnidesk and to be reached by it.

    Each field is one setting, declared once: ``setting()`` gives its default and
    the rule it is read by. The required settings have no default, so they come
    first. Build it with ``from_env`` or ``from_credentials``: they validate. The
    constructor itself trusts its arguments (it serves tests and ``dataclasses.replace``).
    """

    # Required: Omnidesk's tokens, and where Omnidesk reaches Rasa.
    chat_account_token: Secret = setting(
        parse=_token(rules.CHAT_ACCOUNT_TOKEN),
        example="the live chat token from Omnidesk (Settings > Channels > Live chat > Tokens), "
        "letters and digits such as a1B2c3D4e5F6",
        meaning="Omnidesk's chatAccountToken",
        secret=True,
    )
    chat_server_token: Secret = setting(
        parse=_token(rules.CHAT_SERVER_TOKEN),
        example="the chat server token from Omnidesk, letters and digits such as Z9y8X7w6V5u4",
        meaning="Omnidesk's chatServerToken, for requestChatConfig",
        secret=True,
    )
    public_url: str = setting(
        parse=_public_url,
        example="https://bot.example.com",
        meaning="the http(s) URL at which Omnidesk reaches Rasa's server",
    )
    hookpoint_secret: Secret = setting(
        parse=_hookpoint_secret,
        example="24 to 128 letters, digits and '-'; make one with "
        'python -c "import secrets; print(secrets.token_hex(24))"',
        meaning="the secret path segment of the hookpoints Omnidesk calls",
        secret=True,
    )
    # Omnidesk's API.
    api_url: str = setting("https://account.omnidesk.com", parse=_url)
    chat_config_url: str = setting("https://chat.omnidesk.io", parse=_url)
    api_key: Optional[Secret] = setting(
        None, parse=_api_key, example="the API key from Omnidesk, e.g. k3y-ABC123", secret=True
    )
    brand_id: Optional[str] = setting(None, parse=_plain_text, example="12")
    end_chat_path: str = setting(
        DEFAULT_END_CHAT_PATH,
        parse=_path,
        example=f"{{default}} (or {SPEC_END_CHAT_PATH}, the path of Omnidesk's specification)",
    )
    # Each Omnidesk call: its timeouts and retries (retry.py).
    connect_timeout: float = setting(3.0, parse=_positive)
    request_timeout: float = setting(10.0, parse=_positive)
    max_attempts: int = setting(4, parse=_integer(1, 10, "must be a whole number from 1 to 10"))
    retry_budget: float = setting(30.0, parse=_positive)
    backoff_base: float = setting(0.5, parse=_positive)
    backoff_max: float = setting(8.0, parse=_positive, at_least="backoff_base")
    # A handoff's timers.
    inactivity_timeout: float = setting(900.0, parse=_positive)
    queue_timeout: float = setting(3600.0, parse=_positive)
    agent_wait_notice: float = setting(
        300.0, parse=_non_negative, example="{default} (or 0 to turn the notice off)"
    )
    record_interval: float = setting(30.0, parse=_positive)
    new_chat_grace: float = setting(0.3, parse=_positive)
    outage_hold: float = setting(30.0, parse=_non_negative)
    # How long a customer turn waits for the turns of its conversation before it.
    turn_wait: float = setting(60.0, parse=_positive)
    # What the customer may say and send.
    leave_command: str = setting("/leave_human_chat", parse=_non_empty)
    max_upload_bytes: int = setting(
        10 * 1024 * 1024, parse=_integer(1, None, "must be a positive whole number of bytes")
    )
    allowed_upload_types: Tuple[str, ...] = setting(
        DEFAULT_ALLOWED_UPLOAD_TYPES,
        parse=_mime_types,
        example="image/png,image/jpeg,application/pdf,image/*",
    )
    files_dir: Optional[pathlib.Path] = setting(
        None, parse=_files_dir, example="/var/lib/rasa-omnidesk/files"
    )
    switchboard_url: str = setting(
        "memory://",
        parse=_switchboard_url,
        example="{default} or redis://localhost:6379/0",
        show=_show_url,
    )
    # The switchboard's Redis as Rasa Pro's lock store block (standard, sentinel,
    # cluster; TLS, ACL user), for what a URL cannot say.
    redis: Optional[RedisConnection] = setting(
        None,
        parse=_redis,
        example='{deployment_mode: sentinel, endpoints: ["sentinel-0:26379"], '
        "sentinel_service: mymaster}; in the environment as a JSON object or a URL",
        show=_show_redis,
    )
    # How many replicas must hold an agent's message before its hookpoint answers ok.
    redis_wait_replicas: int = setting(
        0,
        parse=_integer(0, 16, "must be a whole number of replicas from 0 to 16"),
        example="{default} (or 1: a failover loses no message answered ok)",
    )
    redis_wait_timeout: float = setting(0.5, parse=_positive)
    agent_name_prefix: bool = setting(True, parse=_boolean)
    # Messenger: agent messages carry the HUMAN_AGENT tag (answers up to 7 days after
    # the customer's last message; the app needs Meta's Human Agent permission).
    messenger_human_agent_tag: bool = setting(True, parse=_boolean)
    # Several instances: how long agent files are kept, and how many chats the
    # sweeper ends at once.
    files_retention: float = setting(
        7 * 24 * 3600.0, parse=_non_negative, example="{default} (7 days; 0 keeps files forever)"
    )
    sweep_concurrency: int = setting(
        10, parse=_integer(1, 1000, "must be a whole number from 1 to 1000")
    )
    # Delivery to the customer (outbox, socket.io): how long a message waits, and
    # how redelivery to a channel that refused it backs off.
    outbox_retention: float = setting(86400.0, parse=_positive, example="{default} (a day)")
    outbox_backoff_base: float = setting(0.5, parse=_positive)
    outbox_backoff_max: float = setting(8.0, parse=_positive, at_least="outbox_backoff_base")
    socketio_redis_url: Optional[str] = setting(
        None,
        parse=_redis_url,
        example="redis://localhost:6379/0 (default: the switchboard's)",
        show=_show_url,
    )
    # The readiness probe (channel/health.py): how long Redis's PING may take, how
    # long its answer is reused, and how often a quiet instance asks Omnidesk.
    readiness_timeout: float = setting(0.5, parse=_positive)
    readiness_cache: float = setting(
        1.0, parse=_non_negative, example="{default} (0 asks Redis on every probe)"
    )
    api_check_interval: float = setting(
        300.0, parse=_non_negative, example="{default} (0 turns the check off)"
    )
    # Observability (docs/metrics.md): the metrics route, the action server's
    # metrics port, and the handoff steps' structured log lines.
    metrics_enabled: bool = setting(False, parse=_boolean)
    action_metrics_port: Optional[int] = setting(
        None,
        parse=_integer(1, 65535, "must be a TCP port number from 1 to 65535"),
        example="9105 (default: off)",
    )
    log_format: str = setting("text", parse=_log_format, example="{default} (or json)")
    log_message_text: bool = setting(False, parse=_boolean)
    # A customer who pulls (rest, docs/channel.md): how many long polls and
    # streams one process holds at once, and how long a stream's ticket opens it.
    pull_max_held: int = setting(
        1000, parse=_integer(1, 100000, "must be a whole number from 1 to 100000")
    )
    stream_ticket_ttl: float = setting(600.0, parse=_positive, example="{default} (10 minutes)")

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "OmnideskSettings":
        """Read the OMNIDESK_* variables of ``env`` (default: ``os.environ``)."""
        return cls.from_credentials(None, env)

    @classmethod
    def from_credentials(
        cls,
        credentials: Optional[Mapping[str, Any]],
        env: Optional[Mapping[str, str]] = None,
        ignore: Iterable[str] = RESERVED_CREDENTIALS_KEYS,
    ) -> "OmnideskSettings":
        """Read the channel's credentials, falling back to ``env`` key by key.

        ``ignore`` names credentials keys that belong to the caller (by default
        the channel's ``customer_channels``); any other key that is not a setting
        is an error, so a typo in credentials.yml does not pass unnoticed. A key
        whose value is empty or null counts as not set, so ``api_key:
        ${OMNIDESK_API_KEY}`` with the variable set to "" means no API key.
        """
        env = os.environ if env is None else env
        credentials = credentials or {}
        table = _settings_of(cls)
        by_key = {entry.key: entry for entry in table}
        problems: List[SettingProblem] = []

        ignored = set(ignore)
        for key in credentials:
            if key in by_key or key in ignored:
                continue
            problems.append(_unknown_key_problem(key, sorted(by_key), ignored))

        values: Dict[str, Any] = {}
        for entry in table:
            rule = entry.rule
            raw = credentials.get(entry.key)
            if _is_unset(raw):
                raw = env.get(entry.env_var)
            if _is_unset(raw):
                if rule.required:
                    problems.append(entry.problem(f"is required: {rule.meaning}"))
                continue
            try:
                values[entry.key] = rule.parse(raw)
            except _Invalid as invalid:
                shown = "" if rule.secret else f", got {rule.show(raw)}"
                problems.append(entry.problem(f"{invalid.rule}{shown}"))

        for entry in table:
            if entry.rule.at_least is None:
                continue
            low = by_key[entry.rule.at_least]
            floor = values.get(low.key, low.default)
            value = values.get(entry.key, entry.default)
            if value < floor:
                problems.append(
                    entry.problem(
                        f"must be at least {low.key} ({floor:g} s), got {value:g}",
                        example=f"{max(floor, entry.default):g}",
                    )
                )

        problems.extend(_redis_problems(values, by_key))

        if problems:
            order = {entry.key: index for index, entry in enumerate(table)}
            problems.sort(key=lambda problem: order.get(problem.key, -1))
            raise SettingsError(problems)

        settings = cls(**values)
        # Both parts were checked; the whole is checked too, as Omnidesk will.
        try:
            rules.CHAT_SERVER.check(settings.chat_server)
        except rules.FieldRuleError as error:
            raise SettingsError(
                [by_key["public_url"].problem(f"makes an invalid chatServer: {error.rule}")]
            ) from None
        return settings

    @property
    def chat_server(self) -> str:
        """chatServer, the hookpoint base Omnidesk posts to. Holds the secret: never log it."""
        return f"{self.public_url}{self.hookpoint_path_prefix}"

    @property
    def chat_server_for_logs(self) -> str:
        return f"{self.public_url}{HOOKPOINT_BASE_PATH}/{_MASK}"

    @property
    def hookpoint_path_prefix(self) -> str:
        """The path on Rasa's own server under which the hookpoints live. Holds the secret.

        It is the path of ``chat_server`` without ``public_url``'s own path: a
        reverse proxy that publishes Rasa under a path strips that path.
        """
        return f"{HOOKPOINT_BASE_PATH}/{self.hookpoint_secret.reveal()}"

    # -- per-chat hookpoints ------------------------------------------------------

    def hookpoint_token(self, chat_session_id: str) -> str:
        """The hookpoint capability of one chat: an HMAC of its id under the hookpoint secret.

        40 hex digits, so it fits chatServer's alphabet. Only this chat's
        hookpoint calls carry it; the secret itself never leaves the process.
        """
        return derive_chat_token(
            self.hookpoint_secret.reveal(), HOOKPOINT_TOKEN_CONTEXT, chat_session_id
        )

    def chat_server_for(self, chat_session_id: str) -> str:
        """chatServer for one chat: ``{public_url}/webhooks/omnidesk/hook/{token}``. Never log it."""
        return f"{self.public_url}{HOOKPOINT_BASE_PATH}/{self.hookpoint_token(chat_session_id)}"

    def customer_token(self, chat_session_id: str) -> str:
        """The customer's capability for the customer routes while ``chat_session_id`` is open."""
        return derive_chat_token(
            self.hookpoint_secret.reveal(), CUSTOMER_TOKEN_CONTEXT, chat_session_id
        )

    def stream_ticket(self, conversation_id: str, chat_session_id: str, expires_at: int) -> str:
        """A read-only pass to one conversation's stream of one chat until ``expires_at``.

        ``{chat}.{expires_at}.{signature}``: the signature, an HMAC under the
        hookpoint secret, binds the conversation too. It goes in a URL (an
        EventSource cannot set headers), so it opens only the stream, and only
        for ``stream_ticket_ttl``; docs/security.md says why.
        """
        return f"{chat_session_id}.{expires_at}.{self._ticket_signature(conversation_id, chat_session_id, expires_at)}"

    def stream_ticket_chat(self, conversation_id: str, ticket: str, now: float) -> Optional[str]:
        """The chat whose stream ``ticket`` opens for ``conversation_id`` now, or None."""
        chat_session_id, _, rest = ticket.partition(".")
        expires, _, signature = rest.partition(".")
        if not (chat_session_id and expires.isascii() and expires.isdigit() and signature):
            return None
        expected = self._ticket_signature(conversation_id, chat_session_id, int(expires))
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected.encode("ascii")):
            return None
        return chat_session_id if int(expires) > now else None

    def _ticket_signature(self, conversation_id: str, chat_session_id: str, expires_at: int) -> str:
        # The chat id and the time hold no newline, so the message reads one way only.
        return derive_chat_token(
            self.hookpoint_secret.reveal(),
            STREAM_TICKET_CONTEXT,
            f"{conversation_id}\n{chat_session_id}\n{expires_at}",
        )

    @property
    def switchboard_url_for_logs(self) -> str:
        return _mask_url_password(self.switchboard_url)

    @functools.cached_property
    def redis_connection(self) -> Optional[RedisConnection]:
        """The switchboard's Redis, from ``redis`` or ``switchboard_url``; None with memory://."""
        if self.redis is not None:
            return self.redis
        if self.switchboard_url.startswith("memory://"):
            return None
        return RedisConnection.from_url(self.switchboard_url, setting="switchboard_url")

    @property
    def switchboard_for_logs(self) -> str:
        """Where the switchboard is, without secrets: memory:// or the Redis connection."""
        connection = self.redis_connection
        return "memory://" if connection is None else connection.for_logs()

    @functools.cached_property
    def socketio_connection(self) -> Optional[RedisConnection]:
        """The Redis socket.io shares sockets through; None with memory:// (one process)."""
        if self.socketio_redis_url:
            return RedisConnection.from_url(self.socketio_redis_url, setting="socketio_redis_url")
        return self.redis_connection

    def __repr__(self) -> str:
        shown = []
        for spec_field in dataclasses.fields(self):
            value = getattr(self, spec_field.name)
            if spec_field.name == "switchboard_url":
                value = self.switchboard_url_for_logs
            if spec_field.name == "socketio_redis_url" and isinstance(value, str):
                value = _mask_url_password(value)
            shown.append(f"{spec_field.name}={value!r}")
        return f"OmnideskSettings({', '.join(shown)})"

    __str__ = __repr__


@dataclass(frozen=True)
class _Setting:
    """One field of the settings with its rule: what reading and reporting need."""

    key: str
    rule: _Rule
    default: Any

    @property
    def env_var(self) -> str:
        return env_var_for(self.key)

    @property
    def valid_value(self) -> str:
        if "{default}" not in self.rule.example:
            return self.rule.example
        return self.rule.example.replace("{default}", _default_text(self.default))

    def problem(self, problem: str, example: Optional[str] = None) -> SettingProblem:
        return SettingProblem(self.key, self.env_var, problem, example or self.valid_value)


def _settings_of(cls: type) -> Tuple[_Setting, ...]:
    """The settings of ``cls`` in field order. A field declared without ``setting()`` is refused."""
    table: List[_Setting] = []
    for spec_field in dataclasses.fields(cls):
        rule = spec_field.metadata.get(_RULE)
        if not isinstance(rule, _Rule):
            raise TypeError(
                f"{cls.__name__}.{spec_field.name} has no rule: declare it with setting(...) "
                "so it is read from a variable and checked"
            )
        if rule.at_least is not None and rule.at_least not in (entry.key for entry in table):
            raise TypeError(
                f"{cls.__name__}.{spec_field.name}: at_least={rule.at_least!r} "
                "names no setting declared before it"
            )
        table.append(_Setting(spec_field.name, rule, spec_field.default))
    return tuple(table)


# Checked at import: a field without a rule fails here, not at the first start-up.
SETTING_KEYS: FrozenSet[str] = frozenset(entry.key for entry in _settings_of(OmnideskSettings))


def _redis_problems(
    values: Mapping[str, Any], by_key: Mapping[str, _Setting]
) -> List[SettingProblem]:
    """The Redis settings that contradict each other, or need a Redis switchboard."""
    problems: List[SettingProblem] = []
    switchboard_url = values.get("switchboard_url")
    if values.get("redis") is not None and switchboard_url is not None:
        problems.append(
            by_key["redis"].problem(
                f"and switchboard_url ({_show_url(switchboard_url)}) both say where the "
                "switchboard is: keep one, the redis block for sentinel, cluster or TLS "
                "files, or switchboard_url for one server"
            )
        )
    with_redis = values.get("redis") is not None or (
        switchboard_url is not None and not switchboard_url.startswith("memory://")
    )
    if with_redis:
        return problems
    if values.get("socketio_redis_url"):
        problems.append(
            by_key["socketio_redis_url"].problem(
                "needs a Redis switchboard (switchboard_url: redis://... or redis): with "
                "memory:// the outbox and presence live in one process, so sharing sockets "
                "between instances would lose messages; leave it unset"
            )
        )
    if values.get("redis_wait_replicas"):
        problems.append(
            by_key["redis_wait_replicas"].problem(
                "needs a Redis switchboard (switchboard_url: redis://... or redis): with "
                "memory:// there are no replicas to wait for; leave it unset",
                example="0",
            )
        )
    return problems


def _unknown_key_problem(key: Any, keys: Sequence[str], ignored: Iterable[str]) -> SettingProblem:
    text = str(key)
    guess = text.lower()
    if guess.startswith(ENV_PREFIX.lower()):
        guess = guess[len(ENV_PREFIX) :]
    close = difflib.get_close_matches(guess, list(keys) + sorted(ignored), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return SettingProblem(
        text,
        None,
        f"is not an Omnidesk setting{hint or '.'} The settings are: {', '.join(keys)}",
        "",
    )
