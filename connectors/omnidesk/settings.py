"""The OMNIDESK_* settings, read and validated once at start-up.

Both processes build the same ``OmnideskSettings``: ``rasa run`` from the
channel's credentials (``from_credentials``), ``rasa run actions`` from the
environment (``from_env``). A credentials key is the variable's name without the
``OMNIDESK_`` prefix, in lower case, and wins over the variable. Every missing or
malformed setting is reported at once, in one ``SettingsError`` that names each
setting (credentials key and variable) and shows a valid value, so a bad
configuration fails at start-up rather than at the first customer turn.

Tokens and secrets are held in ``Secret``: they never show in a repr, a str or an
error message. docs/configuration.md lists every setting.

Nothing here imports rasa, rasa_sdk, sanic or aiohttp.
"""

import dataclasses
import difflib
import hashlib
import hmac
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
        """The credentials keys of the settings that are wrong, in table order."""
        return tuple(problem.key for problem in self.problems)


def derive_chat_token(secret: str, context: bytes, chat_session_id: str) -> str:
    """A per-chat capability: the first 40 hex digits of HMAC-SHA256(secret, context + id)."""
    digest = hmac.new(
        secret.encode("utf-8"), context + chat_session_id.encode("utf-8"), hashlib.sha256
    )
    return digest.hexdigest()[:HOOKPOINT_TOKEN_LENGTH]


def env_var_for(key: str) -> str:
    return ENV_PREFIX + key.upper()


@dataclass(frozen=True, repr=False)
class OmnideskSettings:
    """Everything both processes need to talk to Omnidesk and to be reached by it.

    Build it with ``from_env`` or ``from_credentials``: they validate. The
    constructor itself trusts its arguments (it serves tests and ``dataclasses.replace``).
    """

    chat_account_token: Secret
    chat_server_token: Secret
    public_url: str
    hookpoint_secret: Secret
    api_url: str = "https://account.omnidesk.com"
    chat_config_url: str = "https://chat.omnidesk.io"
    api_key: Optional[Secret] = None
    brand_id: Optional[str] = None
    end_chat_path: str = DEFAULT_END_CHAT_PATH
    connect_timeout: float = 3.0
    request_timeout: float = 10.0
    max_attempts: int = 4
    retry_budget: float = 30.0
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    inactivity_timeout: float = 900.0
    queue_timeout: float = 3600.0
    agent_wait_notice: float = 300.0
    record_interval: float = 30.0
    new_chat_grace: float = 0.3
    outage_hold: float = 30.0
    leave_command: str = "/leave_human_chat"
    max_upload_bytes: int = 10 * 1024 * 1024
    allowed_upload_types: Tuple[str, ...] = DEFAULT_ALLOWED_UPLOAD_TYPES
    files_dir: Optional[pathlib.Path] = None
    switchboard_url: str = "memory://"
    agent_name_prefix: bool = True
    # Several instances: how long agent files are kept, and how many chats the
    # sweeper ends at once.
    files_retention: float = 7 * 24 * 3600.0
    sweep_concurrency: int = 10
    # Delivery to the customer across instances (outbox, socket.io).
    outbox_retention: float = 86400.0
    socketio_redis_url: Optional[str] = None
    # The readiness probe (channel/health.py): how long Redis's PING may take, how
    # long its answer is reused, and how often a quiet instance asks Omnidesk.
    readiness_timeout: float = 0.5
    readiness_cache: float = 1.0
    api_check_interval: float = 300.0
    # Observability (docs/metrics.md): the metrics route, the action server's
    # metrics port, and the handoff steps' structured log lines.
    metrics_enabled: bool = False
    action_metrics_port: Optional[int] = None
    log_format: str = "text"
    log_message_text: bool = False

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
        problems: List[SettingProblem] = []

        ignored = set(ignore)
        for key in credentials:
            if key in _SPECS or key in ignored:
                continue
            problems.append(_unknown_key_problem(key, ignored))

        values: Dict[str, Any] = {}
        for key, spec in _SPECS.items():
            raw = credentials.get(key)
            if _is_unset(raw):
                raw = env.get(spec.env_var)
            if _is_unset(raw):
                if spec.required:
                    problems.append(spec.problem(f"is required: {spec.meaning}"))
                continue
            try:
                values[key] = spec.parse(raw)
            except _Invalid as invalid:
                shown = "" if spec.secret else f", got {spec.show(raw)}"
                problems.append(spec.problem(f"{invalid.rule}{shown}"))

        base = values.get("backoff_base", _DEFAULTS["backoff_base"])
        maximum = values.get("backoff_max", _DEFAULTS["backoff_max"])
        if maximum < base:
            problems.append(
                _SPECS["backoff_max"].problem(
                    f"must be at least backoff_base ({base:g} s), got {maximum:g}",
                    example=f"{max(base, _DEFAULTS['backoff_max']):g}",
                )
            )

        if values.get("socketio_redis_url") and values.get(
            "switchboard_url", _DEFAULTS["switchboard_url"]
        ).startswith("memory://"):
            problems.append(
                _SPECS["socketio_redis_url"].problem(
                    "needs a Redis switchboard (switchboard_url: redis://...): with memory:// "
                    "the outbox and presence live in one process, so sharing sockets "
                    "between instances would lose messages; leave it unset"
                )
            )

        if problems:
            problems.sort(key=lambda problem: _ORDER.get(problem.key, -1))
            raise SettingsError(problems)

        settings = cls(**values)
        # Both parts were checked; the whole is checked too, as Omnidesk will.
        try:
            rules.CHAT_SERVER.check(settings.chat_server)
        except rules.FieldRuleError as error:
            raise SettingsError(
                [_SPECS["public_url"].problem(f"makes an invalid chatServer: {error.rule}")]
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

    @property
    def switchboard_url_for_logs(self) -> str:
        return _mask_url_password(self.switchboard_url)

    @property
    def socketio_url(self) -> Optional[str]:
        """The Redis URL socket.io shares sockets through; None with memory:// (one process)."""
        if self.socketio_redis_url:
            return self.socketio_redis_url
        if self.switchboard_url.startswith("memory://"):
            return None
        return self.switchboard_url

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
    return value


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


# Each default is written once, on OmnideskSettings' field; the table below
# reads it from there, and an example shows it through "{default}".
_DEFAULTS: Dict[str, Any] = {
    spec_field.name: spec_field.default
    for spec_field in dataclasses.fields(OmnideskSettings)
    if spec_field.default is not dataclasses.MISSING
}


def _default_text(key: str) -> str:
    """A setting's default as one would write it in an environment variable."""
    value = _DEFAULTS[key]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


@dataclass(frozen=True)
class _Spec:
    """How one setting is read: its parser, a valid value to show, and what it means.

    ``example`` may hold ``{default}``, which stands for the setting's default.
    """

    key: str
    parse: Callable[[Any], Any]
    example: str = "{default}"
    meaning: str = ""
    secret: bool = False
    required: bool = False
    show: Callable[[Any], str] = _show

    @property
    def env_var(self) -> str:
        return env_var_for(self.key)

    @property
    def valid_value(self) -> str:
        if "{default}" not in self.example:
            return self.example
        return self.example.replace("{default}", _default_text(self.key))

    def problem(self, problem: str, example: Optional[str] = None) -> SettingProblem:
        return SettingProblem(self.key, self.env_var, problem, example or self.valid_value)


_PUBLIC_URL_EXAMPLE = "https://bot.example.com"

_SPEC_LIST: Tuple[_Spec, ...] = (
    _Spec("api_url", _url),
    _Spec("chat_config_url", _url),
    _Spec(
        "chat_account_token",
        _token(rules.CHAT_ACCOUNT_TOKEN),
        "the live chat token from Omnidesk (Settings > Channels > Live chat > Tokens), "
        "letters and digits such as a1B2c3D4e5F6",
        meaning="Omnidesk's chatAccountToken",
        secret=True,
        required=True,
    ),
    _Spec(
        "chat_server_token",
        _token(rules.CHAT_SERVER_TOKEN),
        "the chat server token from Omnidesk, letters and digits such as Z9y8X7w6V5u4",
        meaning="Omnidesk's chatServerToken, for requestChatConfig",
        secret=True,
        required=True,
    ),
    _Spec("api_key", _api_key, "the API key from Omnidesk, e.g. k3y-ABC123", secret=True),
    _Spec("brand_id", _plain_text, "12"),
    _Spec(
        "end_chat_path",
        _path,
        f"{{default}} (or {SPEC_END_CHAT_PATH}, the path of Omnidesk's specification)",
    ),
    _Spec(
        "public_url",
        _public_url,
        _PUBLIC_URL_EXAMPLE,
        meaning="the http(s) URL at which Omnidesk reaches Rasa's server",
        required=True,
    ),
    _Spec(
        "hookpoint_secret",
        _hookpoint_secret,
        "24 to 128 letters, digits and '-'; make one with "
        'python -c "import secrets; print(secrets.token_hex(24))"',
        meaning="the secret path segment of the hookpoints Omnidesk calls",
        secret=True,
        required=True,
    ),
    _Spec("connect_timeout", _positive),
    _Spec("request_timeout", _positive),
    _Spec("max_attempts", _integer(1, 10, "must be a whole number from 1 to 10")),
    _Spec("retry_budget", _positive),
    _Spec("backoff_base", _positive),
    _Spec("backoff_max", _positive),
    _Spec("inactivity_timeout", _positive),
    _Spec("queue_timeout", _positive),
    _Spec("agent_wait_notice", _non_negative, "{default} (or 0 to turn the notice off)"),
    _Spec("record_interval", _positive),
    _Spec("new_chat_grace", _positive),
    _Spec("outage_hold", _non_negative),
    _Spec("leave_command", _non_empty),
    _Spec("max_upload_bytes", _integer(1, None, "must be a positive whole number of bytes")),
    _Spec("allowed_upload_types", _mime_types, "image/png,image/jpeg,application/pdf,image/*"),
    _Spec("files_dir", _files_dir, "/var/lib/rasa-omnidesk/files"),
    _Spec(
        "switchboard_url",
        _switchboard_url,
        "{default} or redis://localhost:6379/0",
        show=lambda raw: _show(_mask_url_password(raw) if isinstance(raw, str) else raw),
    ),
    _Spec("agent_name_prefix", _boolean),
    # Several instances.
    _Spec("files_retention", _non_negative, "{default} (7 days; 0 keeps files forever)"),
    _Spec("sweep_concurrency", _integer(1, 1000, "must be a whole number from 1 to 1000")),
    # Delivery to the customer across instances (outbox, socket.io).
    _Spec("outbox_retention", _positive, "{default} (a day)"),
    _Spec(
        "socketio_redis_url",
        _redis_url,
        "redis://localhost:6379/0 (default: the switchboard's)",
        show=lambda raw: _show(_mask_url_password(raw) if isinstance(raw, str) else raw),
    ),
    # The readiness probe.
    _Spec("readiness_timeout", _positive),
    _Spec("readiness_cache", _non_negative, "{default} (0 asks Redis on every probe)"),
    _Spec("api_check_interval", _non_negative, "{default} (0 turns the check off)"),
    # Observability.
    _Spec("metrics_enabled", _boolean),
    _Spec(
        "action_metrics_port",
        _integer(1, 65535, "must be a TCP port number from 1 to 65535"),
        "9105 (default: off)",
    ),
    _Spec("log_format", _log_format, "{default} (or json)"),
    _Spec("log_message_text", _boolean),
)

_SPECS: Dict[str, _Spec] = {spec.key: spec for spec in _SPEC_LIST}
_ORDER: Dict[str, int] = {spec.key: index for index, spec in enumerate(_SPEC_LIST)}
SETTING_KEYS: FrozenSet[str] = frozenset(_SPECS)


def _unknown_key_problem(key: Any, ignored: Iterable[str]) -> SettingProblem:
    text = str(key)
    guess = text.lower()
    if guess.startswith(ENV_PREFIX.lower()):
        guess = guess[len(ENV_PREFIX) :]
    close = difflib.get_close_matches(guess, sorted(_SPECS) + sorted(ignored), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return SettingProblem(
        text,
        None,
        f"is not an Omnidesk setting{hint or '.'} The settings are: {', '.join(sorted(_SPECS))}",
        "",
    )
