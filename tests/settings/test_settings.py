"""OMNIDESK_* settings: what a developer gets for a good, a missing or a bad value."""

import dataclasses
import pathlib
import pickle

import pytest

from connectors.omnidesk import rules
from connectors.omnidesk.settings import (
    DEFAULT_ALLOWED_UPLOAD_TYPES,
    SETTING_KEYS,
    OmnideskSettings,
    Secret,
    SettingsError,
    setting,
)

ACCOUNT_TOKEN = "AccountToken1234567890"
SERVER_TOKEN = "ServerToken0987654321"
HOOKPOINT_SECRET = "hookpoint-secret-0123456789abcdef"
API_KEY = "ApiKey-5ecret-value"
SECRETS = (ACCOUNT_TOKEN, SERVER_TOKEN, HOOKPOINT_SECRET, API_KEY)

REQUIRED_ENV = {
    "OMNIDESK_CHAT_ACCOUNT_TOKEN": ACCOUNT_TOKEN,
    "OMNIDESK_CHAT_SERVER_TOKEN": SERVER_TOKEN,
    "OMNIDESK_PUBLIC_URL": "https://bot.example.com",
    "OMNIDESK_HOOKPOINT_SECRET": HOOKPOINT_SECRET,
}


def env_with(**changes):
    env = dict(REQUIRED_ENV)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def error_for(env=None, credentials=None) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        OmnideskSettings.from_credentials(credentials, env=REQUIRED_ENV if env is None else env)
    return caught.value


def test_the_required_settings_alone_give_the_documented_defaults():
    settings = OmnideskSettings.from_env(REQUIRED_ENV)

    assert settings.api_url == "https://account.omnidesk.com"
    assert settings.chat_config_url == "https://chat.omnidesk.io"
    assert settings.chat_account_token.reveal() == ACCOUNT_TOKEN
    assert settings.chat_server_token.reveal() == SERVER_TOKEN
    assert settings.api_key is None
    assert settings.brand_id is None
    assert settings.end_chat_path == "/api/v2/message/notifyUserEndChat"
    assert settings.public_url == "https://bot.example.com"
    assert settings.hookpoint_secret.reveal() == HOOKPOINT_SECRET
    assert settings.connect_timeout == 3
    assert settings.request_timeout == 10
    assert settings.max_attempts == 4
    assert settings.retry_budget == 30
    assert settings.backoff_base == 0.5
    assert settings.backoff_max == 8
    assert settings.inactivity_timeout == 900
    assert settings.agent_wait_notice == 300
    assert settings.leave_command == "/leave_human_chat"
    assert settings.max_upload_bytes == 10485760
    assert settings.allowed_upload_types == DEFAULT_ALLOWED_UPLOAD_TYPES
    assert settings.files_dir is None
    assert settings.switchboard_url == "memory://"
    assert settings.agent_name_prefix is True


def test_every_setting_is_read_from_its_variable():
    env = env_with(
        OMNIDESK_API_URL="https://acme.omnidesk.com/",
        OMNIDESK_CHAT_CONFIG_URL="http://localhost:8080/chat/",
        OMNIDESK_API_KEY=API_KEY,
        OMNIDESK_BRAND_ID="12",
        OMNIDESK_END_CHAT_PATH="/api/v2/chat/notifyUserEndChat",
        OMNIDESK_CONNECT_TIMEOUT="1.5",
        OMNIDESK_REQUEST_TIMEOUT="4",
        OMNIDESK_MAX_ATTEMPTS="10",
        OMNIDESK_RETRY_BUDGET="12.5",
        OMNIDESK_BACKOFF_BASE="0.25",
        OMNIDESK_BACKOFF_MAX="0.25",
        OMNIDESK_INACTIVITY_TIMEOUT="60",
        OMNIDESK_AGENT_WAIT_NOTICE="0",
        OMNIDESK_LEAVE_COMMAND="/stop",
        OMNIDESK_MAX_UPLOAD_BYTES="2048",
        OMNIDESK_ALLOWED_UPLOAD_TYPES=" image/* , Application/PDF,image/png,image/png",
        OMNIDESK_FILES_DIR="/tmp/omnidesk-files",
        OMNIDESK_SWITCHBOARD_URL="rediss://:pw@redis.internal:6380/2",
        OMNIDESK_AGENT_NAME_PREFIX="no",
    )

    settings = OmnideskSettings.from_env(env)

    assert settings.api_url == "https://acme.omnidesk.com"
    assert settings.chat_config_url == "http://localhost:8080/chat"
    assert settings.api_key == Secret(API_KEY)
    assert settings.brand_id == "12"
    assert settings.end_chat_path == "/api/v2/chat/notifyUserEndChat"
    assert (settings.connect_timeout, settings.request_timeout) == (1.5, 4)
    assert (settings.max_attempts, settings.retry_budget) == (10, 12.5)
    assert (settings.backoff_base, settings.backoff_max) == (0.25, 0.25)
    assert (settings.inactivity_timeout, settings.agent_wait_notice) == (60, 0)
    assert settings.leave_command == "/stop"
    assert settings.max_upload_bytes == 2048
    assert settings.allowed_upload_types == ("image/*", "application/pdf", "image/png")
    assert settings.files_dir == pathlib.Path("/tmp/omnidesk-files")
    assert settings.switchboard_url == "rediss://:pw@redis.internal:6380/2"
    assert settings.agent_name_prefix is False


def test_credentials_win_over_the_environment():
    env = env_with(OMNIDESK_API_URL="https://env.omnidesk.com", OMNIDESK_MAX_ATTEMPTS="2")

    settings = OmnideskSettings.from_credentials(
        {"api_url": "https://creds.omnidesk.com", "chat_account_token": "CredentialsToken99"}, env
    )

    assert settings.api_url == "https://creds.omnidesk.com"
    assert settings.chat_account_token.reveal() == "CredentialsToken99"
    assert settings.max_attempts == 2


def test_credentials_may_hold_numbers_booleans_and_lists_as_yaml_gives_them():
    settings = OmnideskSettings.from_credentials(
        {
            "connect_timeout": 2,
            "request_timeout": 7.5,
            "max_attempts": 3,
            "agent_wait_notice": 0,
            "max_upload_bytes": 4096,
            "agent_name_prefix": False,
            "allowed_upload_types": ["image/png", "text/plain"],
            "brand_id": 12,
        },
        REQUIRED_ENV,
    )

    assert (settings.connect_timeout, settings.request_timeout) == (2.0, 7.5)
    assert settings.max_attempts == 3
    assert settings.agent_wait_notice == 0
    assert settings.max_upload_bytes == 4096
    assert settings.agent_name_prefix is False
    assert settings.allowed_upload_types == ("image/png", "text/plain")
    assert settings.brand_id == "12"


def test_an_empty_or_null_credentials_value_falls_back_to_the_environment():
    settings = OmnideskSettings.from_credentials(
        {"api_key": "", "brand_id": None, "api_url": "  "},
        env_with(OMNIDESK_API_URL="https://env.omnidesk.com"),
    )

    assert settings.api_key is None
    assert settings.brand_id is None
    assert settings.api_url == "https://env.omnidesk.com"


@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", " Yes "])
def test_true_is_spelled_several_ways(word):
    env = env_with(OMNIDESK_AGENT_NAME_PREFIX=word)
    assert OmnideskSettings.from_env(env).agent_name_prefix is True


@pytest.mark.parametrize("word", ["false", "False", "0", "no"])
def test_false_is_spelled_several_ways(word):
    env = env_with(OMNIDESK_AGENT_NAME_PREFIX=word)
    assert OmnideskSettings.from_env(env).agent_name_prefix is False


@pytest.mark.parametrize(
    ("key", "env_var"),
    [
        ("chat_account_token", "OMNIDESK_CHAT_ACCOUNT_TOKEN"),
        ("chat_server_token", "OMNIDESK_CHAT_SERVER_TOKEN"),
        ("public_url", "OMNIDESK_PUBLIC_URL"),
        ("hookpoint_secret", "OMNIDESK_HOOKPOINT_SECRET"),
    ],
)
def test_a_missing_required_setting_is_named(key, env_var):
    error = error_for(env_with(**{env_var: None}))

    assert error.keys == (key,)
    message = str(error)
    assert key in message
    assert env_var in message
    assert "is required" in message
    assert "a valid value:" in message


def test_an_empty_required_variable_counts_as_missing():
    error = error_for(env_with(OMNIDESK_PUBLIC_URL=""))

    assert error.keys == ("public_url",)
    assert "https://bot.example.com" in str(error)


def test_all_problems_are_reported_at_once():
    error = error_for(env={"OMNIDESK_MAX_ATTEMPTS": "0"})

    assert error.keys == (
        "chat_account_token",
        "chat_server_token",
        "public_url",
        "hookpoint_secret",
        "max_attempts",
    )
    assert str(error).count("\n- ") == 5


MALFORMED = [
    ("api_url", "ftp://account.omnidesk.com", "https://account.omnidesk.com"),
    ("api_url", "account.omnidesk.com", "https://account.omnidesk.com"),
    ("api_url", "https://account.omnidesk.com/?x=1", "https://account.omnidesk.com"),
    ("chat_config_url", "chat.omnidesk.io", "https://chat.omnidesk.io"),
    ("chat_account_token", "short", "letters and digits"),
    ("chat_account_token", "has-dashes-0123456", "letters and digits"),
    ("chat_server_token", "with spaces 0123456", "letters and digits"),
    ("api_key", "has a space", "k3y-ABC123"),
    ("end_chat_path", "api/v2/chat/notifyUserEndChat", "/api/v2/message/notifyUserEndChat"),
    ("end_chat_path", "/api?x=1", "/api/v2/chat/notifyUserEndChat"),
    ("public_url", "bot.example.com", "https://bot.example.com"),
    ("public_url", "https://bot_1.example.com", "https://bot.example.com"),
    ("public_url", "https://bot.example.com/a%20b", "https://bot.example.com"),
    ("hookpoint_secret", "too-short", "secrets.token_hex(24)"),
    ("hookpoint_secret", "under_score_not_allowed_0123456789", "secrets.token_hex(24)"),
    ("hookpoint_secret", "a" * 24, "secrets.token_hex(24)"),
    ("hookpoint_secret", "ab-" * 12, "secrets.token_hex(24)"),
    ("connect_timeout", "abc", "3"),
    ("connect_timeout", "0", "3"),
    ("request_timeout", "-1", "10"),
    ("request_timeout", "nan", "10"),
    ("max_attempts", "0", "4"),
    ("max_attempts", "11", "4"),
    ("max_attempts", "2.5", "4"),
    ("retry_budget", "inf", "30"),
    ("backoff_base", "0", "0.5"),
    ("backoff_max", "0.1", "8"),
    ("inactivity_timeout", "15m", "900"),
    ("agent_wait_notice", "-5", "300"),
    ("max_upload_bytes", "10MB", "10485760"),
    ("max_upload_bytes", "0", "10485760"),
    ("allowed_upload_types", "image/png,pdf", "image/png,image/jpeg"),
    ("allowed_upload_types", ",", "image/png,image/jpeg"),
    ("switchboard_url", "http://localhost:6379", "redis://localhost:6379/0"),
    ("switchboard_url", "redis://", "redis://localhost:6379/0"),
    ("switchboard_url", "memory", "redis://localhost:6379/0"),
    ("agent_name_prefix", "maybe", "true"),
]


@pytest.mark.parametrize(("key", "value", "example"), MALFORMED)
def test_a_malformed_setting_is_named_with_a_valid_example(key, value, example):
    env_var = "OMNIDESK_" + key.upper()

    error = error_for(env_with(**{env_var: value}))

    assert error.keys == (key,)
    message = str(error)
    assert key in message
    assert env_var in message
    assert example in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("connect_timeout", True),
        ("max_attempts", 3.5),
        ("agent_name_prefix", 2),
        ("allowed_upload_types", 5),
        ("api_url", 42),
        ("public_url", ["https://bot.example.com"]),
    ],
)
def test_a_credentials_value_of_the_wrong_type_is_named(key, value):
    error = error_for(credentials={key: value})

    assert error.keys == (key,)


def test_a_malformed_secret_is_never_echoed():
    error = error_for(
        env_with(
            OMNIDESK_CHAT_ACCOUNT_TOKEN="s3cr3t-with-dash",
            OMNIDESK_CHAT_SERVER_TOKEN="an0ther secret",
            OMNIDESK_API_KEY="key with spaces",
            OMNIDESK_HOOKPOINT_SECRET="hook_secret_with_underscores",
        )
    )

    assert set(error.keys) == {
        "chat_account_token",
        "chat_server_token",
        "api_key",
        "hookpoint_secret",
    }
    message = str(error)
    for leaked in ("s3cr3t", "an0ther", "key with spaces", "hook_secret"):
        assert leaked not in message
        assert leaked not in repr(error)


def test_a_redis_password_is_masked_in_errors_and_repr():
    error = error_for(env_with(OMNIDESK_SWITCHBOARD_URL="http://:hunter2@localhost:6379"))
    assert "hunter2" not in str(error)

    settings = OmnideskSettings.from_env(
        env_with(OMNIDESK_SWITCHBOARD_URL="redis://user:hunter2@localhost:6379/0")
    )
    assert "hunter2" not in repr(settings)
    assert settings.switchboard_url_for_logs == "redis://user:***@localhost:6379/0"


def test_secrets_are_absent_from_repr_and_str():
    settings = OmnideskSettings.from_env(env_with(OMNIDESK_API_KEY=API_KEY))

    for shown in (repr(settings), str(settings), f"{settings}"):
        for secret in SECRETS:
            assert secret not in shown
    assert "Secret('***')" in repr(settings)
    assert str(settings.chat_account_token) == "***"
    assert f"{settings.api_key}" == "***"


def test_a_secret_compares_by_value_and_survives_pickling():
    assert Secret("abc") == Secret("abc")
    assert Secret("abc") != Secret("abd")
    assert pickle.loads(pickle.dumps(Secret("abc"))).reveal() == "abc"


def test_chat_server_is_derived_from_public_url_and_the_secret():
    settings = OmnideskSettings.from_env(env_with(OMNIDESK_PUBLIC_URL="https://bot.example.com/"))

    assert settings.chat_server == (
        f"https://bot.example.com/webhooks/omnidesk/hook/{HOOKPOINT_SECRET}"
    )
    assert settings.chat_server_for_logs == "https://bot.example.com/webhooks/omnidesk/hook/***"
    assert settings.hookpoint_path_prefix == f"/webhooks/omnidesk/hook/{HOOKPOINT_SECRET}"


def test_chat_server_keeps_a_port_and_a_proxy_path():
    settings = OmnideskSettings.from_env(
        env_with(OMNIDESK_PUBLIC_URL="http://10.0.0.5:5005/rasa-bot")
    )

    assert settings.chat_server == (
        f"http://10.0.0.5:5005/rasa-bot/webhooks/omnidesk/hook/{HOOKPOINT_SECRET}"
    )
    assert settings.hookpoint_path_prefix == f"/webhooks/omnidesk/hook/{HOOKPOINT_SECRET}"


def test_an_unknown_credentials_key_is_an_error_naming_it():
    error = error_for(credentials={"api_ulr": "https://x.example.com"})

    assert error.keys == ("api_ulr",)
    assert "api_ulr" in str(error)
    assert "did you mean 'api_url'" in str(error)


def test_an_environment_style_credentials_key_gets_a_hint():
    error = error_for(credentials={"OMNIDESK_PUBLIC_URL": "https://bot.example.com"})

    assert "did you mean 'public_url'" in str(error)


def test_the_channels_own_keys_pass_and_callers_may_reserve_more():
    credentials = {"customer_channels": {"socketio": {}}, "widget_theme": "dark"}

    with pytest.raises(SettingsError):
        OmnideskSettings.from_credentials(credentials, REQUIRED_ENV)
    settings = OmnideskSettings.from_credentials(
        credentials, REQUIRED_ENV, ignore=("customer_channels", "widget_theme")
    )

    assert settings.public_url == "https://bot.example.com"


def test_from_env_reads_os_environ_by_default(monkeypatch):
    for name, value in REQUIRED_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMNIDESK_MAX_ATTEMPTS", "7")

    assert OmnideskSettings.from_env().max_attempts == 7


def test_upload_types_accept_a_wildcard_and_ignore_parameters():
    settings = OmnideskSettings.from_env(
        env_with(OMNIDESK_ALLOWED_UPLOAD_TYPES="image/*,application/pdf")
    )

    allowed = settings.allowed_upload_types
    assert rules.check_upload_type("image/heic", allowed) == "image/heic"
    assert rules.check_upload_type("Application/PDF; name=a.pdf", allowed) == "application/pdf"
    with pytest.raises(rules.FieldRuleError) as refused:
        rules.check_upload_type("application/zip", allowed)
    assert refused.value.status == 415


def test_every_setting_has_a_variable_and_the_table_is_complete():
    # Every field of the settings object is read from a variable, and nothing else is.
    fields = {f.name for f in dataclasses.fields(OmnideskSettings)}
    assert set(SETTING_KEYS) == fields


def test_a_default_shown_as_a_valid_value_is_the_field_s_own_default():
    # Each default is written once, on the dataclass field; errors show it from there.
    settings = OmnideskSettings.from_env(REQUIRED_ENV)
    for key in ("connect_timeout", "max_attempts", "max_upload_bytes", "agent_name_prefix"):
        env_var = "OMNIDESK_" + key.upper()
        (problem,) = error_for(env_with(**{env_var: "nonsense"})).problems
        value = getattr(settings, key)
        if isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value) if isinstance(value, int) else f"{value:g}"
        assert problem.example == shown, key


def test_files_retention_and_sweep_concurrency_are_read_and_checked():
    settings = OmnideskSettings.from_env(
        env_with(OMNIDESK_FILES_RETENTION="0", OMNIDESK_SWEEP_CONCURRENCY="3")
    )
    assert (settings.files_retention, settings.sweep_concurrency) == (0, 3)
    with pytest.raises(SettingsError) as refused:
        OmnideskSettings.from_env(env_with(OMNIDESK_SWEEP_CONCURRENCY="0"))
    assert "OMNIDESK_SWEEP_CONCURRENCY" in str(refused.value)


def test_messages_for_an_absent_customer_wait_a_day_by_default():
    assert OmnideskSettings.from_env(env_with()).outbox_retention == 86400
    assert (
        OmnideskSettings.from_env(env_with(OMNIDESK_OUTBOX_RETENTION="600")).outbox_retention == 600
    )
    assert "outbox_retention" in str(error_for(env_with(OMNIDESK_OUTBOX_RETENTION="0")))


def test_socketio_shares_sockets_through_the_switchboard_s_redis_unless_told_otherwise():
    assert OmnideskSettings.from_env(env_with()).socketio_connection is None
    redis = env_with(OMNIDESK_SWITCHBOARD_URL="redis://localhost:6379/0")
    shared = OmnideskSettings.from_env(redis).socketio_connection
    assert shared is not None and (shared.host, shared.port, shared.db) == ("localhost", 6379, 0)
    own = dict(redis, OMNIDESK_SOCKETIO_REDIS_URL="redis://:pw@other:6379/1")
    settings = OmnideskSettings.from_env(own)
    other = settings.socketio_connection
    assert other is not None and (other.host, other.db, other.password) == ("other", 1, "pw")
    assert "pw" not in repr(settings)


def test_a_socketio_redis_url_without_a_redis_switchboard_is_refused_naming_both():
    message = str(error_for(env_with(OMNIDESK_SOCKETIO_REDIS_URL="redis://localhost:6379/1")))
    assert "socketio_redis_url" in message and "switchboard_url" in message


def test_a_password_in_the_redis_urls_query_is_masked_too() -> None:
    from connectors.omnidesk.settings import _mask_url_password

    assert _mask_url_password("redis://h:6379/0?password=s3cret") == "redis://h:6379/0?password=***"
    assert (
        _mask_url_password("redis://u:p@h/0?db=1&Password=x")
        == "redis://u:***@h/0?db=1&Password=***"
    )
    assert _mask_url_password("memory://") == "memory://"
    assert _mask_url_password("redis://h/0") == "redis://h/0"


def test_the_readiness_settings_are_read_and_checked():
    settings = OmnideskSettings.from_env(
        env_with(
            OMNIDESK_READINESS_TIMEOUT="0.25",
            OMNIDESK_READINESS_CACHE="0",
            OMNIDESK_API_CHECK_INTERVAL="0",
        )
    )
    assert (settings.readiness_timeout, settings.readiness_cache) == (0.25, 0)
    assert settings.api_check_interval == 0  # the check off
    error = error_for(
        env_with(
            OMNIDESK_READINESS_TIMEOUT="0",
            OMNIDESK_READINESS_CACHE="-1",
            OMNIDESK_API_CHECK_INTERVAL="5m",
        )
    )
    assert error.keys == ("readiness_timeout", "readiness_cache", "api_check_interval")
    assert "OMNIDESK_READINESS_TIMEOUT" in str(error)
    assert "a valid value: 300" in str(error)


def test_redelivery_to_the_customer_backs_off_on_its_own_settings():
    settings = OmnideskSettings.from_env(env_with())
    assert (settings.outbox_backoff_base, settings.outbox_backoff_max) == (0.5, 8)

    settings = OmnideskSettings.from_env(
        env_with(
            OMNIDESK_OUTBOX_BACKOFF_BASE="2",
            OMNIDESK_OUTBOX_BACKOFF_MAX="60",
            OMNIDESK_BACKOFF_BASE="0.1",
            OMNIDESK_BACKOFF_MAX="1",
        )
    )
    assert (settings.outbox_backoff_base, settings.outbox_backoff_max) == (2, 60)
    assert (settings.backoff_base, settings.backoff_max) == (0.1, 1)


@pytest.mark.parametrize(
    ("key", "value", "example"),
    [
        ("outbox_backoff_base", "0", "0.5"),
        ("outbox_backoff_base", "-1", "0.5"),
        ("outbox_backoff_max", "soon", "8"),
        ("outbox_backoff_max", "inf", "8"),
    ],
)
def test_a_malformed_outbox_backoff_is_named_with_a_valid_example(key, value, example):
    env_var = "OMNIDESK_" + key.upper()

    error = error_for(env_with(**{env_var: value}))

    assert error.keys == (key,)
    assert env_var in str(error)
    assert f"a valid value: {example}" in str(error)


def test_an_outbox_backoff_max_below_its_base_is_refused_naming_both():
    error = error_for(env_with(OMNIDESK_OUTBOX_BACKOFF_BASE="20"))

    assert error.keys == ("outbox_backoff_max",)
    message = str(error)
    assert "OMNIDESK_OUTBOX_BACKOFF_MAX" in message
    assert "must be at least outbox_backoff_base (20 s), got 8" in message
    assert "a valid value: 20" in message


def test_each_backoff_pair_is_checked_against_its_own_base():
    # The client's retries and the outbox's redelivery are paced apart: a long
    # outbox base does not constrain backoff_max, nor the other way round.
    settings = OmnideskSettings.from_env(
        env_with(OMNIDESK_OUTBOX_BACKOFF_BASE="5", OMNIDESK_BACKOFF_MAX="1")
    )
    assert (settings.backoff_max, settings.outbox_backoff_base) == (1, 5)

    error = error_for(env_with(OMNIDESK_BACKOFF_BASE="10", OMNIDESK_OUTBOX_BACKOFF_MAX="0.1"))
    assert error.keys == ("backoff_max", "outbox_backoff_max")
    assert "must be at least backoff_base (10 s), got 8" in str(error)
    assert "must be at least outbox_backoff_base (0.5 s), got 0.1" in str(error)


def test_problems_are_reported_in_the_order_the_settings_are_declared():
    error = error_for(
        env={
            "OMNIDESK_LOG_FORMAT": "xml",
            "OMNIDESK_API_URL": "nowhere",
            "OMNIDESK_PUBLIC_URL": "bot.example.com",
        },
        credentials={"api_ulr": "https://acme.omnidesk.com"},
    )

    declared = [field.name for field in dataclasses.fields(OmnideskSettings)]
    assert error.keys[0] == "api_ulr"  # a key that is no setting comes first
    named = list(error.keys[1:])
    assert named == sorted(named, key=declared.index)
    assert {"public_url", "api_url", "log_format", "chat_account_token"} <= set(named)


def test_every_field_of_the_settings_carries_its_rule():
    # A field added without setting(...) would never be read from a variable; the
    # module refuses it when it is imported, naming the field.
    @dataclasses.dataclass(frozen=True, repr=False)
    class WithAStrayField(OmnideskSettings):
        stray_timeout: float = 5.0

    with pytest.raises(TypeError, match=r"WithAStrayField\.stray_timeout has no rule"):
        WithAStrayField.from_env(REQUIRED_ENV)
    assert "stray_timeout" not in SETTING_KEYS
    for field in dataclasses.fields(OmnideskSettings):
        assert field.name in SETTING_KEYS


def test_a_setting_with_a_rule_is_read_in_its_place():
    @dataclasses.dataclass(frozen=True, repr=False)
    class WithOneMore(OmnideskSettings):
        drain_pause: float = setting(2.0, parse=lambda raw: float(raw))

    settings = WithOneMore.from_env(env_with(OMNIDESK_DRAIN_PAUSE="3"))

    assert settings.drain_pause == 3
    assert settings.api_url == "https://account.omnidesk.com"


def test_a_required_setting_must_say_what_it_is_and_show_a_real_value():
    with pytest.raises(TypeError, match="needs a meaning"):
        setting(parse=str)
    with pytest.raises(TypeError, match="shows a default"):
        setting(parse=str, meaning="the thing")
    with pytest.raises(TypeError, match="shows a default"):
        setting(None, parse=str)
