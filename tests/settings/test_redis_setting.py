"""The switchboard's Redis as a team has it: Rasa Pro's lock store block pasted under
``redis``, a JSON object or a URL in OMNIDESK_REDIS, or ``switchboard_url`` as before."""

import json

import pytest

from connectors.omnidesk.redis_connection import RedisMode
from connectors.omnidesk.settings import OmnideskSettings, SettingsError
from tests.settings.test_settings import REQUIRED_ENV, env_with, error_for

# Rasa Pro 3.21's lock store block for a Sentinel group, as endpoints.yml has it.
SENTINEL_LOCK_STORE = {
    "type": "concurrent_redis",
    "deployment_mode": "sentinel",
    "endpoints": ["sentinel-0:26379", "sentinel-1:26379", "sentinel-2:26379"],
    "sentinel_service": "mymaster",
    "password": "s3cret-pw",
    "key_prefix": "mybot",
    "db": 1,
}


def test_a_lock_store_block_pasted_into_the_credentials_names_the_switchboard():
    settings = OmnideskSettings.from_credentials({"redis": SENTINEL_LOCK_STORE}, env=REQUIRED_ENV)

    connection = settings.redis_connection
    assert connection is not None and connection.mode is RedisMode.SENTINEL
    assert str(connection.endpoints[0]) == "sentinel-0:26379"
    assert (connection.service, connection.db, connection.password) == ("mymaster", 1, "s3cret-pw")
    assert settings.socketio_connection == connection
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in settings.switchboard_for_logs
    assert settings.switchboard_for_logs.startswith("sentinel service 'mymaster'")


def test_the_environment_takes_the_block_as_a_json_object_or_a_url():
    block = {"deployment_mode": "cluster", "endpoints": ["redis-0:6379", "redis-1:6379"]}
    from_json = OmnideskSettings.from_env(env_with(OMNIDESK_REDIS=json.dumps(block)))
    from_url = OmnideskSettings.from_env(
        env_with(OMNIDESK_REDIS="redis+sentinel://:pw@s-0:26379,s-1:26379/0/mymaster")
    )

    assert from_json.redis_connection is not None
    assert from_json.redis_connection.mode is RedisMode.CLUSTER
    assert from_url.redis_connection is not None
    assert from_url.redis_connection.mode is RedisMode.SENTINEL


def test_switchboard_url_works_as_before():
    settings = OmnideskSettings.from_env(
        env_with(OMNIDESK_SWITCHBOARD_URL="rediss://:pw@redis.internal:6380/2")
    )

    connection = settings.redis_connection
    assert connection is not None and connection.mode is RedisMode.STANDARD
    assert (connection.host, connection.port, connection.db) == ("redis.internal", 6380, 2)
    assert connection.use_ssl and connection.password == "pw"
    assert OmnideskSettings.from_env(env_with()).redis_connection is None


def test_the_block_and_switchboard_url_together_are_refused_naming_both():
    message = str(
        error_for(
            env_with(OMNIDESK_SWITCHBOARD_URL="redis://localhost:6379/0"),
            credentials={"redis": {"host": "redis.internal"}},
        )
    )

    assert "redis (OMNIDESK_REDIS)" in message and "switchboard_url" in message
    assert "keep one" in message


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"deployment_mode": "cluster", "endpoints": ["r-0:6379"], "db": 3}, "redis.db must be 0"),
        ({"deployment_mode": "sentinel"}, "redis.endpoints must list the sentinels"),
        ({"host": "r", "ssl_certfile": "/nowhere/client.crt"}, "redis.ssl_certfile"),
        ({"hots": "r"}, "did you mean host?"),
    ],
)
def test_a_block_that_cannot_work_is_refused_at_start_up_naming_the_key(block, named):
    message = str(error_for(credentials={"redis": block}))

    assert "redis (OMNIDESK_REDIS)" in message and named in message


def test_a_malformed_variable_is_refused_saying_what_would_do():
    message = str(error_for(env_with(OMNIDESK_REDIS='{"deployment_mode": "cluster",')))

    assert "JSON object does not parse" in message
    assert "redis (OMNIDESK_REDIS)" in str(error_for(env_with(OMNIDESK_REDIS="localhost")))


def test_a_password_in_a_refused_block_is_not_shown():
    message = str(
        error_for(credentials={"redis": {"password": "s3cret-pw", "deployment_mode": "moon"}})
    )

    assert "deployment_mode" in message and "s3cret-pw" not in message


def test_waiting_for_replicas_needs_redis_and_is_bounded():
    settings = OmnideskSettings.from_env(
        env_with(
            OMNIDESK_SWITCHBOARD_URL="redis://localhost:6379/0",
            OMNIDESK_REDIS_WAIT_REPLICAS="1",
            OMNIDESK_REDIS_WAIT_TIMEOUT="0.25",
        )
    )
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout) == (1, 0.25)
    assert OmnideskSettings.from_env(REQUIRED_ENV).redis_wait_replicas == 0

    with pytest.raises(SettingsError) as without_redis:
        OmnideskSettings.from_env(env_with(OMNIDESK_REDIS_WAIT_REPLICAS="1"))
    assert "redis_wait_replicas" in str(without_redis.value)
    assert "redis_wait_replicas" in str(
        error_for(
            env_with(OMNIDESK_SWITCHBOARD_URL="redis://h/0", OMNIDESK_REDIS_WAIT_REPLICAS="x")
        )
    )
