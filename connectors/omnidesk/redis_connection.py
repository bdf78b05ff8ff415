"""How the connector reaches Redis: one server, a Sentinel group or a Cluster.

Teams run Rasa Pro's lock store and tracker store on the Redis they run in
production, so ``RedisConnection.from_config`` reads the same block Rasa Pro
3.21 reads (``deployment_mode``, ``host``, ``port``, ``db``, ``username``,
``password``, ``use_ssl``, ``ssl_*``, ``endpoints``, ``sentinel_service``,
``socket_timeout``): a ``lock_store:`` block pasted under the connector's
setting works unchanged. A plain URL (``redis://``, ``rediss://``, python-socketio's
``redis+sentinel://``) works too. Every problem of a block is reported at once, in
one ``RedisSettingsError`` naming each key and a valid value, so a bad block fails
at start-up. Where Rasa Pro only warns or silently ignores (``db`` in cluster
mode, ``endpoints`` in standard mode), we refuse: the block would not do what it says.

The rest builds redis-py asyncio clients for the mode, on redis-py 4.6 (Rasa 3.6)
and on the redis-py of Rasa Pro: ``create_client`` for commands and scripts,
``create_pubsub_client`` for pub/sub (redis-py 4.6's asyncio RedisCluster has
none), ``socketio_manager_options`` for python-socketio's ``AsyncRedisManager``,
and ``RedisPing`` for health checks bounded in time. Passwords never show in a
repr, a str or an error. Nothing here imports rasa or sanic; redis is imported
when a client is made.
"""

import asyncio
import contextlib
import dataclasses
import difflib
import enum
import functools
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)
from urllib.parse import parse_qsl, unquote, urlsplit

from connectors.omnidesk import rules

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
# Rasa Pro's default service name when a sentinel block names none.
DEFAULT_SENTINEL_SERVICE = "mymaster"
# What a command waits for its answer when neither the caller nor the block says.
DEFAULT_SOCKET_TIMEOUT = 5.0
# How long closing a client's sockets may take before the rest is dropped.
CLOSE_WITHIN = 2.0

_MASK = "***"

# The keys of Rasa Pro 3.21's redis lock store and tracker store blocks
# (rasa/core/lock_store.py RedisLockStoreConfig, RedisTrackerStore.__init__,
# rasa/core/redis_connection_factory.py RedisConfig); Rasa 3.6's are a subset.
RASA_KEYS: Tuple[str, ...] = (
    "deployment_mode",
    "url",
    "host",
    "port",
    "db",
    "username",
    "password",
    "use_ssl",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_ca_certs",
    "socket_timeout",
    "endpoints",
    "sentinel_service",
)
# Keys of those blocks that configure Rasa's own store, not the connection: read
# and ignored, so the block can be pasted as it is.
RASA_STORE_KEYS: Tuple[str, ...] = ("type", "key_prefix", "record_exp")
# The store types whose block has the shape above.
RASA_REDIS_TYPES: Tuple[str, ...] = ("redis", "concurrent_redis")
# Ours: what Rasa's block cannot say.
EXTRA_KEYS: Tuple[str, ...] = (
    "socket_connect_timeout",
    "sentinel_username",
    "sentinel_password",
    "sentinel_use_ssl",
    "ssl_check_hostname",
)
KNOWN_KEYS: Tuple[str, ...] = RASA_KEYS + RASA_STORE_KEYS + EXTRA_KEYS

_URL_QUERY_KEYS: FrozenSet[str] = frozenset(
    {"db", "password", "socket_timeout", "socket_connect_timeout"}
)


class RedisMode(str, enum.Enum):
    """Rasa Pro's ``deployment_mode``: what stands behind the connection."""

    STANDARD = "standard"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class RedisAddress:
    """A host and port: a server, a sentinel or a cluster node."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class RedisSettingProblem:
    """One key of a Redis block that is wrong: which, why, and a value that would do."""

    key: str
    problem: str
    example: str = ""

    def __str__(self) -> str:
        advice = f"; a valid value: {self.example}" if self.example else ""
        return f"{self.key} {self.problem}{advice}"


class RedisSettingsError(ValueError):
    """A Redis block that cannot work. Names every key at fault, never a password."""

    def __init__(self, problems: Sequence[RedisSettingProblem], setting: str = "redis") -> None:
        self.problems: Tuple[RedisSettingProblem, ...] = tuple(problems)
        self.setting = setting
        lines = [f"{setting}.{problem}" for problem in self.problems]
        if len(lines) == 1:
            message = f"Redis setting {lines[0]}"
        else:
            message = "Redis settings are invalid:\n" + "\n".join(f"- {line}" for line in lines)
        super().__init__(message)

    @property
    def keys(self) -> Tuple[str, ...]:
        return tuple(problem.key for problem in self.problems)


class RedisUnavailable(ConnectionError):
    """Redis did not answer as it should; ``reason`` says why in words safe to log."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"Redis ({where}): {reason}")


@dataclass(frozen=True, repr=False)
class RedisConnection:
    """Where Redis is and how to speak to it. Build it with ``from_config``: it validates.

    ``endpoints`` are the sentinels in sentinel mode and the startup nodes in
    cluster mode; ``host`` and ``port`` are the server in standard mode.
    ``socket_timeout`` None lets the caller choose (``create_client``).
    """

    mode: RedisMode = RedisMode.STANDARD
    host: str = "localhost"
    port: int = DEFAULT_PORT
    db: int = 0
    endpoints: Tuple[RedisAddress, ...] = ()
    sentinel_service: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    sentinel_username: Optional[str] = None
    sentinel_password: Optional[str] = None
    sentinel_use_ssl: bool = False
    use_ssl: bool = False
    ssl_keyfile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_ca_certs: Optional[str] = None
    ssl_check_hostname: bool = True
    socket_timeout: Optional[float] = None
    socket_connect_timeout: Optional[float] = None

    # -- building -----------------------------------------------------------------

    @classmethod
    def from_config(
        cls, raw: Union[str, Mapping[str, Any]], *, setting: str = "redis"
    ) -> "RedisConnection":
        """A connection from a URL or from a Rasa Pro store block; every problem at once.

        ``setting`` names the block in messages (``switchboard.db ...``).
        """
        if isinstance(raw, str):
            return cls.from_config({"url": raw}, setting=setting)
        if not isinstance(raw, Mapping):
            raise RedisSettingsError(
                [
                    RedisSettingProblem(
                        "(block)",
                        f"must be a Redis URL or a mapping of keys, got {type(raw).__name__}",
                        "redis://localhost:6379/0",
                    )
                ],
                setting,
            )
        return _Parser(raw).connection(setting)

    @classmethod
    def from_url(cls, url: str, *, setting: str = "redis") -> "RedisConnection":
        return cls.from_config({"url": url}, setting=setting)

    # -- reading ------------------------------------------------------------------

    @property
    def addresses(self) -> Tuple[RedisAddress, ...]:
        """The addresses a client starts from: the server, the sentinels or the nodes."""
        if self.mode is RedisMode.STANDARD:
            return (RedisAddress(self.host, self.port),)
        return self.endpoints

    @property
    def service(self) -> str:
        """The Sentinel service (master) name."""
        return self.sentinel_service or DEFAULT_SENTINEL_SERVICE

    def for_logs(self) -> str:
        """One line that says where Redis is, without secrets."""
        where = ",".join(str(address) for address in self.addresses)
        if self.mode is RedisMode.STANDARD:
            scheme = "rediss" if self.use_ssl else "redis"
            secret = f":{_MASK}" if self.password else ""
            user = f"{self.username or ''}{secret}@" if self.username or secret else ""
            return f"{scheme}://{user}{where}/{self.db}"
        details = [f"db {self.db}"] if self.mode is RedisMode.SENTINEL else []
        if self.use_ssl:
            details.append("TLS")
        if self.username:
            details.append(f"user {self.username!r}")
        described = f" ({', '.join(details)})" if details else ""
        if self.mode is RedisMode.SENTINEL:
            return f"sentinel service {self.service!r} via {where}{described}"
        return f"cluster via {where}{described}"

    def __repr__(self) -> str:
        shown = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name.endswith("password") and value is not None:
                value = _MASK
            elif isinstance(value, RedisMode):
                value = value.value
            elif spec.name == "endpoints":
                value = [str(address) for address in value]
            shown.append(f"{spec.name}={value!r}")
        return f"RedisConnection({', '.join(shown)})"

    __str__ = __repr__


# --- parsing -------------------------------------------------------------------------


class _Invalid(Exception):
    """A raw value breaks a key's rule."""

    def __init__(self, rule: str, example: str = "") -> None:
        super().__init__(rule)
        self.rule = rule
        self.example = example


_EXAMPLES: Dict[str, str] = {
    "deployment_mode": "standard, sentinel or cluster",
    "url": "redis://localhost:6379/0",
    "host": "localhost",
    "port": "6379",
    "db": "0",
    "username": "omnidesk",
    "password": "${REDIS_PASSWORD}",
    "use_ssl": "true",
    "ssl_keyfile": "/etc/redis/tls/client.key",
    "ssl_certfile": "/etc/redis/tls/client.crt",
    "ssl_ca_certs": "/etc/redis/tls/ca.crt",
    "socket_timeout": "5",
    "socket_connect_timeout": "5",
    "endpoints": "[redis-0:6379, redis-1:6379]",
    "sentinel_service": DEFAULT_SENTINEL_SERVICE,
    "sentinel_username": "sentinel",
    "sentinel_password": "${REDIS_SENTINEL_PASSWORD}",
    "sentinel_use_ssl": "true",
    "ssl_check_hostname": "true",
    "type": "redis",
}
_SECRET_KEYS: FrozenSet[str] = frozenset({"password", "sentinel_password"})


class _Parser:
    """One pass over a block: each key read once, each problem collected."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = {str(key): value for key, value in raw.items()}
        self.problems: List[RedisSettingProblem] = []
        # Values a URL gave, checked against the keys beside it.
        self.from_url: Dict[str, Any] = {}

    def problem(self, key: str, rule: str, example: Optional[str] = None) -> None:
        self.problems.append(
            RedisSettingProblem(key, rule, _EXAMPLES.get(key, "") if example is None else example)
        )

    def read(self, key: str, parse: Callable[[Any], Any]) -> Any:
        """The parsed value of ``key``, or None when absent, empty or wrong (then noted)."""
        raw = self.raw.get(key)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return None
        try:
            return parse(raw)
        except _Invalid as invalid:
            shown = "" if key in _SECRET_KEYS else f", got {_show(raw)}"
            self.problem(key, f"{invalid.rule}{shown}", invalid.example or None)
            return None

    def connection(self, setting: str) -> RedisConnection:
        for key in self.raw:
            if key not in KNOWN_KEYS:
                close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.problem(
                    key,
                    f"is not a Redis connection key{hint}; the keys are those of Rasa Pro's "
                    f"redis lock store ({', '.join(RASA_KEYS)}) and {', '.join(EXTRA_KEYS)}",
                    "",
                )
        store_type = self.read("type", _text)
        if store_type is not None and store_type.lower() not in RASA_REDIS_TYPES:
            self.problem(
                "type",
                f"names a store that is not Redis ({store_type!r}); only a block of type "
                f"{' or '.join(RASA_REDIS_TYPES)} describes a Redis connection",
            )

        url = self.read("url", _text)
        host = self.read("host", _host)
        if url is not None and "://" in url:
            self.url(url)
            if host is not None and "host" in self.from_url:
                self.problem("host", "cannot be set beside a url that names the server", "")
        elif url is not None:
            # Rasa's tracker store and Rasa 3.6's lock store (Pro's, deprecated) call the
            # host `url`.
            if host is not None:
                self.problem("url", "and host both name the server; keep host", "")
            else:
                host = self.read("url", _host)
        host = self.from_url.get("host", host)
        mode = self.agree("deployment_mode", self.read("deployment_mode", _mode), "mode")
        mode = mode or RedisMode.STANDARD
        port = self.agree("port", self.read("port", _port))
        db = self.agree("db", self.read("db", _db))
        username = self.agree("username", self.read("username", _text))
        password = self.agree("password", self.read("password", _secret))
        use_ssl = self.agree("use_ssl", self.read("use_ssl", _boolean))
        endpoints = self.agree("endpoints", self.read("endpoints", _endpoints))
        service = self.agree("sentinel_service", self.read("sentinel_service", _text))
        socket_timeout = self.agree("socket_timeout", self.read("socket_timeout", _seconds))
        connect_timeout = self.agree(
            "socket_connect_timeout", self.read("socket_connect_timeout", _seconds)
        )
        ssl_files: Dict[str, Optional[str]] = {
            key: self.read(key, _existing_file)
            for key in ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs")
        }
        check_hostname = self.read("ssl_check_hostname", _boolean)
        sentinel_username = self.read("sentinel_username", _text)
        sentinel_password = self.read("sentinel_password", _secret)
        sentinel_use_ssl = self.read("sentinel_use_ssl", _boolean)

        self.check_tls(use_ssl, ssl_files, check_hostname, sentinel_use_ssl)
        given = {key for key, value in self.raw.items() if value not in (None, "")}
        if url is not None and "://" not in url:
            given.add("host")  # the url key named the host
        if mode is RedisMode.STANDARD:
            for key in ("endpoints", "sentinel_service"):
                if key in given or key in self.from_url:
                    self.problem(
                        key,
                        "only applies to deployment_mode sentinel or cluster; for one server "
                        "set host and port, or set deployment_mode",
                        "",
                    )
        if mode is not RedisMode.SENTINEL:
            for key in ("sentinel_username", "sentinel_password", "sentinel_use_ssl"):
                if key in given:
                    self.problem(key, "only applies to deployment_mode sentinel", "")
        if mode is RedisMode.CLUSTER and "sentinel_service" in given:
            self.problem("sentinel_service", "only applies to deployment_mode sentinel", "")
        if mode is RedisMode.SENTINEL:
            if "endpoints" not in given and "endpoints" not in self.from_url:
                self.problem(
                    "endpoints",
                    "must list the sentinels (host:port) in deployment_mode sentinel",
                    "[sentinel-0:26379, sentinel-1:26379, sentinel-2:26379]",
                )
            for key in self.server_keys(given):
                filed, its = _filed_under(key, self.raw)
                self.problem(
                    filed,
                    f"{its}is not read in deployment_mode sentinel, the sentinels name "
                    "the master: list the sentinels under endpoints",
                    "",
                )
        if mode is RedisMode.CLUSTER:
            if db not in (None, 0):
                self.problem(
                    "db",
                    f"must be 0 in deployment_mode cluster: Redis Cluster has only "
                    f"database 0, got {db}",
                    "0",
                )
            if "endpoints" not in given:
                # Rasa Pro starts from host:port when a cluster block lists no endpoints.
                endpoints = (RedisAddress(host or "localhost", port or DEFAULT_PORT),)
            else:
                for key in self.server_keys(given):
                    filed, its = _filed_under(key, self.raw)
                    self.problem(
                        filed,
                        f"{its}is not read in deployment_mode cluster when endpoints "
                        "are listed: put every startup node under endpoints",
                        "",
                    )

        if self.problems:
            order = {key: index for index, key in enumerate(KNOWN_KEYS)}
            self.problems.sort(key=lambda problem: order.get(problem.key, -1))
            raise RedisSettingsError(self.problems, setting)
        return RedisConnection(
            mode=mode,
            host=host or "localhost",
            port=port or DEFAULT_PORT,
            db=db or 0,
            endpoints=tuple(endpoints or ()),
            sentinel_service=service,
            username=username,
            password=password,
            sentinel_username=sentinel_username,
            sentinel_password=sentinel_password,
            sentinel_use_ssl=bool(sentinel_use_ssl),
            use_ssl=bool(use_ssl),
            ssl_keyfile=ssl_files["ssl_keyfile"],
            ssl_certfile=ssl_files["ssl_certfile"],
            ssl_ca_certs=ssl_files["ssl_ca_certs"],
            ssl_check_hostname=True if check_hostname is None else check_hostname,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
        )

    def server_keys(self, given: Any) -> List[str]:
        """host and port where the block or its url gives them (a url counted once)."""
        keys = [key for key in ("host", "port") if key in given or key in self.from_url]
        if keys == ["host", "port"] and all(key not in given for key in keys):
            return ["host"]
        return keys

    def check_tls(
        self,
        use_ssl: Optional[bool],
        ssl_files: Mapping[str, Optional[str]],
        check_hostname: Optional[bool],
        sentinel_use_ssl: Optional[bool],
    ) -> None:
        given = [key for key in ssl_files if self.raw.get(key) not in (None, "")]
        if given and use_ssl is not True:
            self.problem(
                "use_ssl",
                f"must be true when {', '.join(given)} is set: the files are read only for "
                "a TLS connection",
            )
        pair = ("ssl_keyfile", "ssl_certfile")
        if sum(key in given for key in pair) == 1:
            missing = pair[1] if pair[0] in given else pair[0]
            self.problem(
                missing,
                "must be set too: a client certificate needs its key (ssl_keyfile) and "
                "its certificate (ssl_certfile)",
            )
        if check_hostname is not None and use_ssl is not True:
            self.problem("ssl_check_hostname", "only applies with use_ssl: true", "")
        if sentinel_use_ssl and use_ssl is not True:
            self.problem(
                "sentinel_use_ssl", "needs use_ssl: true (the sentinels use the same files)", ""
            )

    def agree(self, key: str, given: Any, url_key: Optional[str] = None) -> Any:
        """A value the key and the url may both give: they must not disagree."""
        from_url = self.from_url.get(url_key or key)
        if from_url is None:
            return given
        if given is not None and given != from_url:
            shown = "" if key in _SECRET_KEYS else f" ({_show(given)} against {_show(from_url)})"
            self.problem(key, f"disagrees with the url{shown}; say it once", "")
        return from_url

    def url(self, url: str) -> None:
        """Read a redis://, rediss:// or redis+sentinel:// URL into ``from_url``."""
        rule = (
            "must be redis://[user:password@]host:port/db, rediss://... for TLS, or "
            "redis+sentinel://[user:password@]host:port,host:port/db/service"
        )
        bad = f"{rule}, got {_mask_url(url)!r}"
        try:
            parts = urlsplit(url)
        except ValueError:
            self.problem("url", bad)
            return
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "redis+sentinel", "rediss+sentinel"):
            self.problem("url", bad)
            return
        found = self.from_url
        if scheme.startswith("rediss"):
            found["use_ssl"] = True
        hosts = parts.netloc.rsplit("@", 1)[-1]
        if parts.username:
            found["username"] = unquote(parts.username)
        if parts.password:
            found["password"] = unquote(parts.password)
        path = [piece for piece in parts.path.split("/") if piece]
        if scheme.endswith("+sentinel"):
            found["mode"] = RedisMode.SENTINEL
            try:
                found["endpoints"] = _endpoints(hosts, default_port=DEFAULT_SENTINEL_PORT)
            except _Invalid as invalid:
                self.problem("url", f"names no valid sentinel, each {invalid.rule}: {bad}")
            if len(path) > 2:
                self.problem("url", bad)
            if len(path) == 2:
                found["sentinel_service"] = unquote(path[1])
        else:
            try:
                address = _address(hosts, DEFAULT_PORT)
            except _Invalid:
                self.problem("url", bad)
                return
            found["host"] = address.host
            found["port"] = address.port
            if len(path) > 1:
                self.problem("url", bad)
        if path:
            try:
                found["db"] = _db(path[0])
            except _Invalid as invalid:
                self.problem("url", f"has a database that {invalid.rule}: {bad}")
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in _URL_QUERY_KEYS:
                self.problem(
                    "url",
                    f"has a parameter {name!r} that is not read; a url may carry "
                    f"{', '.join(sorted(_URL_QUERY_KEYS))}, anything else is a key beside it",
                    "",
                )
                continue
            try:
                if name == "db":
                    found["db"] = _db(value)
                elif name == "password":
                    found["password"] = _secret(value)
                else:
                    found[name] = _seconds(value)
            except _Invalid as invalid:
                self.problem("url", f"has a {name} that {invalid.rule}", "")


def _filed_under(key: str, raw: Mapping[str, Any]) -> Tuple[str, str]:
    """The key a problem of the host or port goes under, and how its message starts:
    the key itself, or ``url`` ("its host ...") when the url gave it."""
    if raw.get(key) not in (None, ""):
        return key, ""
    return "url", f"(its {key}) "


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 200 else text[:197] + "..."


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Invalid("must be text")
    return raw.strip()


def _secret(raw: Any) -> str:
    if not isinstance(raw, (str, int)) or isinstance(raw, bool):
        raise _Invalid("must be text")
    return str(raw)


def _mode(raw: Any) -> RedisMode:
    try:
        return RedisMode(_text(raw).lower())
    except ValueError:
        raise _Invalid("must be one of standard, sentinel, cluster") from None


def _host(raw: Any) -> str:
    rule = "must be a host name or address (no scheme, no port)"
    value = _text(raw)
    if "://" in value:
        raise _Invalid("must be a host name; a redis:// URL goes under url", "redis.internal")
    if not value or any(character in value for character in " /@?#"):
        raise _Invalid(rule)
    return value.strip("[]")


def _integer(raw: Any, rule: str) -> int:
    if isinstance(raw, bool):
        raise _Invalid(rule)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    raise _Invalid(rule)


def _port(raw: Any) -> int:
    rule = "must be a port number from 1 to 65535"
    value = _integer(raw, rule)
    if not 1 <= value <= 65535:
        raise _Invalid(rule)
    return value


def _db(raw: Any) -> int:
    return _integer(raw, "must be a database number, 0 or more")


def _seconds(raw: Any) -> float:
    rule = "must be a positive number of seconds"
    if isinstance(raw, bool):
        raise _Invalid(rule)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise _Invalid(rule) from None
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(rule)
    return value


def _boolean(raw: Any) -> bool:
    try:
        return rules.parse_bool("", raw)
    except rules.FieldRuleError as error:
        raise _Invalid(error.rule) from None


def _existing_file(raw: Any) -> str:
    value = os.path.expanduser(_text(raw))
    if not os.path.isfile(value):
        raise _Invalid("must be a readable file, and no file is there")
    if not os.access(value, os.R_OK):
        raise _Invalid("must be a readable file, and this one cannot be read")
    return value


def _address(raw: str, default_port: int) -> RedisAddress:
    value = raw.strip()
    rule = "must be host:port"
    if not value:
        raise _Invalid(rule)
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise _Invalid(rule)
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        raise _Invalid("must be host:port, an IPv6 address in brackets: [::1]:6379")
    else:
        host, port_text = value, ""
    host = host.strip()
    if not host or any(character in host for character in " /@?#"):
        raise _Invalid(rule)
    port = default_port if port_text == "" else _port(port_text)
    return RedisAddress(host, port)


def _endpoints(raw: Any, default_port: Optional[int] = None) -> Tuple[RedisAddress, ...]:
    """Rasa Pro's endpoints: a list of ``host:port`` (or one comma-separated string)."""
    rule = "must be a list of host:port"
    if isinstance(raw, str):
        items: List[Any] = [item for item in raw.split(",") if item.strip()]
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise _Invalid(rule)
    if not items:
        raise _Invalid(rule)
    found: List[RedisAddress] = []
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(rule)
        if default_port is None and ":" not in item:
            raise _Invalid(f"{rule}, each with its port, and {item.strip()!r} is not")
        try:
            address = _address(item, default_port or DEFAULT_PORT)
        except _Invalid as invalid:
            raise _Invalid(f"{invalid.rule}, and {item.strip()!r} is not") from None
        if address not in found:
            found.append(address)
    return tuple(found)


def _mask_url(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        credentials, hosts = netloc.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        netloc = f"{user}:{_MASK}@{hosts}" if ":" in credentials else f"{user}@{hosts}"
    query = "&".join(
        f"{name}={_MASK if name.lower() == 'password' else value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query).geturl()


# --- keys ------------------------------------------------------------------------------


def hash_tag(value: str) -> str:
    """``{value}``: keys that carry the same tag live in one Redis Cluster hash slot.

    Redis hashes only what stands between a key's first ``{`` and the next ``}``,
    so a value holding a brace would cut its tag short, or leave it empty (and
    each key hashed whole, in its own slot). Such a value is tagged by its SHA-256.
    """
    if "{" in value or "}" in value or not value:
        import hashlib

        value = "sha256-" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]
    return f"{{{value}}}"


# --- clients -------------------------------------------------------------------------

# A redis-py asyncio client: Redis, or RedisCluster in cluster mode. The stubs of
# redis-py 4.6 and the redis-py of Rasa Pro disagree, so it is typed loosely here.
RedisClient = Any


def _read_timeout(connection: RedisConnection, socket_timeout: Optional[float]) -> float:
    return socket_timeout or connection.socket_timeout or DEFAULT_SOCKET_TIMEOUT


def _connect_timeout(connection: RedisConnection, read_timeout: Optional[float]) -> float:
    return connection.socket_connect_timeout or read_timeout or DEFAULT_SOCKET_TIMEOUT


def _tls(connection: RedisConnection) -> Dict[str, Any]:
    """The arguments of redis-py's SSLConnection (without ``ssl`` itself)."""
    return {
        "ssl_keyfile": connection.ssl_keyfile,
        "ssl_certfile": connection.ssl_certfile,
        "ssl_ca_certs": connection.ssl_ca_certs,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": connection.ssl_check_hostname,
    }


def _retry(retries: Optional[int]) -> Dict[str, Any]:
    """redis-py's retry: ``retries`` more tries after a connection error; None, its default.

    redis-py 4.6 retries nothing by default and newer redis-py three times with
    backoff, so a caller that needs one behaviour on both says so.
    """
    if retries is None:
        return {}
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff, NoBackoff

    backoff: Any = NoBackoff() if retries == 0 else ExponentialBackoff(cap=1.0, base=0.05)
    return {"retry": Retry(backoff, retries)}


def _cluster_retries(retries: Optional[int]) -> Dict[str, Any]:
    """How often redis-py 4's RedisCluster sends a command or pipeline again after a
    connection error, to match ``retries``: there ``retry`` is only each node's.

    Newer redis-py takes ``retry`` for the cluster itself (and warns about this
    argument). redis-py 4.6 needs at least 1: a pipeline is tried that many times
    (once), a single command once more after the slots are read again.
    """
    import redis

    major = int(str(getattr(redis, "__version__", "5")).split(".", 1)[0] or 5)
    if retries is None or major >= 5:
        return {}
    return {"cluster_error_retry_attempts": max(1, retries)}


def _sentinel_kwargs(connection: RedisConnection, connect_timeout: float) -> Dict[str, Any]:
    """How to speak to the sentinels themselves (not to the master they name)."""
    kwargs: Dict[str, Any] = {
        "socket_timeout": connect_timeout,
        "socket_connect_timeout": connect_timeout,
        "username": connection.sentinel_username,
        "password": connection.sentinel_password,
    }
    if connection.sentinel_use_ssl:
        kwargs.update(ssl=True, **_tls(connection))
    return kwargs


def _master_kwargs(connection: RedisConnection, connect_timeout: float) -> Dict[str, Any]:
    """How to speak to the master a sentinel names."""
    kwargs: Dict[str, Any] = {
        "username": connection.username,
        "password": connection.password,
        "socket_connect_timeout": connect_timeout,
    }
    if connection.use_ssl:
        kwargs.update(ssl=True, **_tls(connection))
    return kwargs


def _build(
    connection: RedisConnection,
    *,
    read_timeout: Optional[float],
    decode_responses: bool,
    health_check_interval: float,
    max_connections: Optional[int],
    retries: Optional[int],
) -> RedisClient:
    connect_timeout = _connect_timeout(connection, read_timeout)
    common: Dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": read_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": health_check_interval,
        **_retry(retries),
    }
    if max_connections is not None:
        common["max_connections"] = max_connections
    if connection.mode is RedisMode.SENTINEL:
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(
            [(address.host, address.port) for address in connection.endpoints],
            sentinel_kwargs=_sentinel_kwargs(connection, connect_timeout),
            **_master_kwargs(connection, connect_timeout),
        )
        return sentinel.master_for(connection.service, db=connection.db, **common)
    tls: Dict[str, Any] = {"ssl": True, **_tls(connection)} if connection.use_ssl else {}
    if connection.mode is RedisMode.CLUSTER:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(node.host, node.port) for node in connection.endpoints],
            username=connection.username,
            password=connection.password,
            **tls,
            **common,
            **_cluster_retries(retries),
        )
    import redis.asyncio as aioredis

    return aioredis.Redis(
        host=connection.host,
        port=connection.port,
        db=connection.db,
        username=connection.username,
        password=connection.password,
        **tls,
        **common,
    )


def create_client(
    connection: RedisConnection,
    *,
    decode_responses: bool = True,
    socket_timeout: Optional[float] = None,
    health_check_interval: float = 0,
    max_connections: Optional[int] = None,
    retries: Optional[int] = None,
) -> RedisClient:
    """A redis-py asyncio client for commands, pipelines and Lua scripts, in the mode.

    standard: ``Redis``. sentinel: ``Sentinel(...).master_for(service)``, which asks
    the sentinels for the master on every new connection, so a failover needs no
    restart. cluster: ``RedisCluster``, which sends each key to its slot's master;
    every key of one script or transaction must share a hash tag (``{...}``).
    ``socket_timeout``, the longest wait for an answer, wins over the block's,
    which wins over 5 s. Makes no connection: the first command does. Close it
    with ``close_client``.
    """
    return _build(
        connection,
        read_timeout=_read_timeout(connection, socket_timeout),
        decode_responses=decode_responses,
        health_check_interval=health_check_interval,
        max_connections=max_connections,
        retries=retries,
    )


class NodeRing:
    """The startup nodes of a cluster and the one that answered last, shared by connections."""

    def __init__(self, addresses: Sequence[RedisAddress]) -> None:
        self.addresses: Tuple[RedisAddress, ...] = tuple(addresses)
        self._current = 0

    def in_order(self) -> List[RedisAddress]:
        """The node that answered last first, then the others."""
        return list(self.addresses[self._current :] + self.addresses[: self._current])

    def answered(self, address: RedisAddress) -> None:
        if address in self.addresses:
            self._current = self.addresses.index(address)

    def __repr__(self) -> str:
        return f"NodeRing({[str(address) for address in self.addresses]})"


@functools.lru_cache(maxsize=None)
def any_node_connection_class(tls: bool) -> Type[Any]:
    """A redis-py asyncio connection to one node of a cluster, another when it fails.

    Takes ``nodes`` (a ``NodeRing``) instead of host and port. Each new socket
    tries the node that answered last, then the others in turn. It overrides
    redis-py's ``_connect`` (the socket's opening, the hook redis-py's own
    TLS and Unix socket connections override); a redis-py without it gets a
    plain connection to the first node (warned once).
    """
    from redis.asyncio.connection import Connection, SSLConnection

    base: Any = SSLConnection if tls else Connection

    class AnyNodeConnection(base):  # type: ignore[misc]
        def __init__(self, *, nodes: NodeRing, **kwargs: Any) -> None:
            kwargs.pop("host", None)
            kwargs.pop("port", None)
            self.nodes = nodes
            first = nodes.in_order()[0]
            super().__init__(host=first.host, port=first.port, **kwargs)

        async def _connect(self) -> None:
            failure: Optional[BaseException] = None
            for address in self.nodes.in_order():
                self.host, self.port = address.host, address.port
                try:
                    await super()._connect()
                except (OSError, asyncio.TimeoutError) as error:
                    logger.debug("redis node %s refused a pub/sub connection: %r", address, error)
                    failure = error
                    continue
                self.nodes.answered(address)
                return
            assert failure is not None
            raise failure

    if not hasattr(base, "_connect"):
        logger.warning(
            "redis-py %s has no Connection._connect: the pub/sub connection stays on the first "
            "cluster node and does not move to another one when it fails",
            _redis_version(),
        )
        return base  # type: ignore[no-any-return]
    AnyNodeConnection.__name__ = "AnyNodeSSLConnection" if tls else "AnyNodeConnection"
    AnyNodeConnection.__qualname__ = AnyNodeConnection.__name__
    return AnyNodeConnection


def _redis_version() -> str:
    import redis

    return str(getattr(redis, "__version__", "?"))


def _any_node_options(connection: RedisConnection, connect_timeout: float) -> Dict[str, Any]:
    """The connection pool's arguments for a plain connection to any node of a cluster."""
    options: Dict[str, Any] = {
        "connection_class": any_node_connection_class(connection.use_ssl),
        "nodes": NodeRing(connection.endpoints),
        "username": connection.username,
        "password": connection.password,
        "socket_connect_timeout": connect_timeout,
    }
    if connection.use_ssl:
        options.update(_tls(connection))
    return options


def create_pubsub_client(
    connection: RedisConnection,
    *,
    decode_responses: bool = True,
    health_check_interval: float = 30,
) -> RedisClient:
    """A client whose ``.pubsub()`` and ``.publish()`` work in every mode.

    No read timeout: a subscriber waits for messages as long as it likes. In
    sentinel mode it follows the master. In cluster mode it is a plain client on
    one node (redis-py 4.6's asyncio RedisCluster has no pub/sub): classic PUBLISH
    reaches every node of a cluster, so any node will do, and when the node it is
    on fails, its next connection goes to another startup node, so list several.
    """
    if connection.mode is not RedisMode.CLUSTER:
        return _build(
            connection,
            read_timeout=None,
            decode_responses=decode_responses,
            health_check_interval=health_check_interval,
            max_connections=None,
            retries=None,
        )
    import redis.asyncio as aioredis

    pool = aioredis.ConnectionPool(
        decode_responses=decode_responses,
        health_check_interval=health_check_interval,
        socket_timeout=None,
        **_any_node_options(connection, _connect_timeout(connection, None)),
    )
    client = aioredis.Redis(connection_pool=pool)
    # A pool handed to a client is closed with it only when the client is told so.
    client.auto_close_connection_pool = True
    return client


async def close_client(client: RedisClient) -> None:
    """Close a client of ``create_client`` or ``create_pubsub_client`` and its sockets.

    A Sentinel client also holds connections to the sentinels; they close too.
    """
    pool = getattr(client, "connection_pool", None)
    aclose = getattr(client, "aclose", None)
    closed = aclose() if aclose is not None else client.close()
    if asyncio.iscoroutine(closed):
        await closed
    if pool is not None:
        # A socket whose close never completes (redis/redis-py#3941) must not hold
        # up a shutdown: the wait for the pool's sockets is bounded.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(pool.disconnect(), CLOSE_WITHIN)
        sentinel = getattr(pool, "sentinel_manager", None)
        for sentinel_client in getattr(sentinel, "sentinels", ()):
            await close_client(sentinel_client)


# --- python-socketio -----------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SocketioRedisOptions:
    """The arguments of python-socketio's ``AsyncRedisManager`` for a connection.

    ``url`` holds no secret; ``redis_options`` may (the password): never log it.
    Use: ``socketio.AsyncRedisManager(options.url, channel=...,
    redis_options=options.manager_options())``.
    """

    url: str
    redis_options: Mapping[str, Any]

    def manager_options(self) -> Dict[str, Any]:
        """A fresh copy: the manager adds to the dict it is given."""
        options = dict(self.redis_options)
        if isinstance(options.get("sentinel_kwargs"), Mapping):
            options["sentinel_kwargs"] = dict(options["sentinel_kwargs"])
        return options

    def __repr__(self) -> str:
        return f"SocketioRedisOptions(url={self.url!r}, redis_options={sorted(self.redis_options)})"

    __str__ = __repr__


def socketio_manager_options(connection: RedisConnection) -> SocketioRedisOptions:
    """What python-socketio's ``AsyncRedisManager`` needs to follow ``connection``.

    python-socketio 5.16 and 5.18 read ``redis://``, ``rediss://`` and
    ``redis+sentinel://h:p,h:p/db/service`` URLs and hand ``redis_options`` to
    ``Redis.from_url`` or to ``Sentinel``. They know no Redis Cluster: there the
    manager gets a plain URL to one node and, in ``redis_options``, the
    ``connection_class`` that moves to another node when that one fails (classic
    pub/sub is broadcast to every node). The manager compares channel names as
    bytes, so the options never ask for decoded responses.
    """
    connect_timeout = _connect_timeout(connection, None)
    if connection.mode is RedisMode.SENTINEL:
        sentinels = ",".join(str(address) for address in connection.endpoints)
        options = _master_kwargs(connection, connect_timeout)
        options["sentinel_kwargs"] = _sentinel_kwargs(connection, connect_timeout)
        return SocketioRedisOptions(
            url=f"redis+sentinel://{sentinels}/{connection.db}/{connection.service}",
            redis_options=_drop_none(options),
        )
    if connection.mode is RedisMode.CLUSTER:
        first = connection.endpoints[0]
        return SocketioRedisOptions(
            url=f"redis://{first}/0",
            redis_options=_drop_none(_any_node_options(connection, connect_timeout)),
        )
    scheme = "rediss" if connection.use_ssl else "redis"
    options = {
        "username": connection.username,
        "password": connection.password,
        "socket_connect_timeout": connect_timeout,
    }
    if connection.use_ssl:
        options.update(_tls(connection))
    return SocketioRedisOptions(
        url=f"{scheme}://{RedisAddress(connection.host, connection.port)}/{connection.db}",
        redis_options=_drop_none(options),
    )


def _drop_none(options: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in options.items() if value is not None}


# --- health ----------------------------------------------------------------------------


def describe_failure(error: BaseException, timeout: float) -> str:
    """Why Redis did not answer, in words safe to log (no host, no secret)."""
    from redis import exceptions

    name = type(error).__name__
    text = str(error)
    if isinstance(error, exceptions.AuthenticationError) or any(
        word in text for word in ("WRONGPASS", "NOAUTH", "invalid username-password")
    ):
        return "refused the credentials: check username and password (an ACL user needs both)"
    if "NOPERM" in text or name == "NoPermissionError":
        return "the user may not run the connector's commands (NOPERM): widen its ACL rules"
    if name in ("MasterNotFoundError", "SlaveNotFoundError"):
        return "no sentinel names a master for the service: check sentinel_service and endpoints"
    if "CLUSTERDOWN" in text or name == "ClusterDownError":
        return "the cluster is down (CLUSTERDOWN): not every hash slot is served"
    tls_reason = _tls_reason(error)
    if tls_reason is not None:
        return f"TLS failed ({tls_reason}): check use_ssl, ssl_ca_certs and the certificates"
    if "Timeout" in name or isinstance(error, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, (ConnectionError, OSError)) or "Connection" in name:
        return "connection failed"
    return f"error ({name})"


# OpenSSL's reason as Python words it: "[SSL: CERTIFICATE_VERIFY_FAILED] certificate ..."
_SSL_REASON = re.compile(r"\[SSL(?:: ([A-Z0-9_]+))?\]")


def _tls_reason(error: BaseException) -> Optional[str]:
    """OpenSSL's reason for a failed handshake, wherever in the chain redis-py put it."""
    import ssl

    cause: Optional[BaseException] = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return str(cause.reason or type(cause).__name__)
        found = _SSL_REASON.search(str(cause))
        if found:
            return found.group(1) or "SSL error"
        cause = cause.__cause__ or cause.__context__
    return None


class RedisPing:
    """A PING on a client of its own, one try, bounded by ``timeout``, in any mode.

    standard: the server; sentinel: the master the sentinels name; cluster: every
    master the client knows. Raises ``RedisUnavailable`` saying why.
    """

    def __init__(self, connection: RedisConnection, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self._client: RedisClient = create_client(
            connection, socket_timeout=timeout, retries=0, max_connections=8
        )

    async def __call__(self) -> None:
        try:
            await asyncio.wait_for(self._ping(), self.timeout)
        except asyncio.TimeoutError:
            raise RedisUnavailable(
                self.connection.for_logs(), f"no answer within {self.timeout:g} s"
            ) from None
        except Exception as error:  # every failure becomes a reason, none is swallowed
            raise RedisUnavailable(
                self.connection.for_logs(), describe_failure(error, self.timeout)
            ) from error

    async def _ping(self) -> None:
        if self.connection.mode is RedisMode.CLUSTER:
            await self._client.ping(target_nodes=self._client.PRIMARIES)
        else:
            await self._client.ping()

    async def close(self) -> None:
        await close_client(self._client)


async def check(connection: RedisConnection, timeout: float) -> None:
    """One PING at start-up: raises ``RedisUnavailable`` saying why Redis cannot be used."""
    ping = RedisPing(connection, timeout)
    try:
        await ping()
    finally:
        await ping.close()
