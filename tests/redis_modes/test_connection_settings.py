"""Reading the Redis block: Rasa Pro's lock store block pasted as it is, URLs as before,
and every combination that cannot work refused with the key at fault and a fix."""

from pathlib import Path
from typing import Any, Dict

import pytest

from connectors.omnidesk.redis_connection import (
    RedisAddress,
    RedisConnection,
    RedisMode,
    RedisSettingsError,
    socketio_manager_options,
)

PASSWORD = "s3cret-Pa55word"


def refused(raw: Any) -> RedisSettingsError:
    with pytest.raises(RedisSettingsError) as raised:
        RedisConnection.from_config(raw)
    assert PASSWORD not in str(raised.value)
    return raised.value


@pytest.fixture
def tls_files(tmp_path: Path) -> Dict[str, str]:
    files = {}
    for key, name in (
        ("ssl_ca_certs", "ca.crt"),
        ("ssl_certfile", "client.crt"),
        ("ssl_keyfile", "client.key"),
    ):
        path = tmp_path / name
        path.write_text("-----BEGIN-----\n")
        files[key] = str(path)
    return files


# -- what reads -----------------------------------------------------------------------------


def test_a_rasa_pro_sentinel_lock_store_block_reads_as_it_is(tls_files: Dict[str, str]) -> None:
    block = {
        "type": "redis",
        "deployment_mode": "sentinel",
        "endpoints": ["sentinel-0:26379", "sentinel-1:26379", "sentinel-2:26379"],
        "sentinel_service": "rasa-locks",
        "db": 1,
        "username": "rasa",
        "password": PASSWORD,
        "use_ssl": True,
        "socket_timeout": 10,
        "key_prefix": "bot1",
        **tls_files,
    }

    connection = RedisConnection.from_config(block)

    assert connection.mode is RedisMode.SENTINEL
    assert connection.endpoints == (
        RedisAddress("sentinel-0", 26379),
        RedisAddress("sentinel-1", 26379),
        RedisAddress("sentinel-2", 26379),
    )
    assert (connection.service, connection.db, connection.username) == ("rasa-locks", 1, "rasa")
    assert connection.password == PASSWORD
    assert connection.use_ssl and connection.ssl_ca_certs == tls_files["ssl_ca_certs"]
    assert connection.socket_timeout == 10.0


def test_a_rasa_pro_cluster_block_reads_its_startup_nodes() -> None:
    connection = RedisConnection.from_config(
        {"deployment_mode": "cluster", "endpoints": ["10.0.0.1:7000", "10.0.0.2:7000"]}
    )

    assert connection.mode is RedisMode.CLUSTER
    assert connection.addresses == (RedisAddress("10.0.0.1", 7000), RedisAddress("10.0.0.2", 7000))


def test_a_cluster_block_without_endpoints_starts_from_host_and_port_as_rasa_does() -> None:
    connection = RedisConnection.from_config(
        {"deployment_mode": "cluster", "host": "redis-cluster", "port": 7000}
    )

    assert connection.addresses == (RedisAddress("redis-cluster", 7000),)


def test_a_sentinel_block_without_a_service_uses_rasa_pros_default() -> None:
    connection = RedisConnection.from_config(
        {"deployment_mode": "sentinel", "endpoints": ["s1:26379"]}
    )

    assert connection.service == "mymaster"


def test_a_tracker_store_block_names_the_host_url_as_rasa_reads_it() -> None:
    connection = RedisConnection.from_config({"type": "redis", "url": "redis.internal", "db": 2})

    assert (connection.mode, connection.host, connection.port, connection.db) == (
        RedisMode.STANDARD,
        "redis.internal",
        6379,
        2,
    )


def test_a_redis_url_reads_as_before() -> None:
    connection = RedisConnection.from_config(f"redis://omnidesk:{PASSWORD}@10.1.2.3:6380/4")

    assert (connection.host, connection.port, connection.db) == ("10.1.2.3", 6380, 4)
    assert (connection.username, connection.password) == ("omnidesk", PASSWORD)
    assert not connection.use_ssl


def test_a_rediss_url_turns_tls_on_and_takes_the_files_beside_it(
    tls_files: Dict[str, str],
) -> None:
    connection = RedisConnection.from_config(
        {"url": f"rediss://:{PASSWORD}@redis.internal:6380/0", **tls_files}
    )

    assert connection.use_ssl
    assert connection.ssl_certfile == tls_files["ssl_certfile"]


def test_python_socketios_sentinel_url_reads_as_a_sentinel_block() -> None:
    connection = RedisConnection.from_config(
        f"redis+sentinel://:{PASSWORD}@s1:26379,s2,[::1]:26380/3/rasa"
    )

    assert connection.mode is RedisMode.SENTINEL
    assert connection.endpoints == (
        RedisAddress("s1", 26379),
        RedisAddress("s2", 26379),
        RedisAddress("::1", 26380),
    )
    assert (connection.db, connection.service, connection.password) == (3, "rasa", PASSWORD)


def test_values_from_the_environment_arrive_as_text_and_read_the_same() -> None:
    connection = RedisConnection.from_config(
        {
            "deployment_mode": "SENTINEL",
            "endpoints": "s1:26379, s2:26379",
            "db": "2",
            "socket_timeout": "2.5",
        }
    )

    assert connection.mode is RedisMode.SENTINEL
    assert len(connection.endpoints) == 2
    assert (connection.db, connection.socket_timeout) == (2, 2.5)


# -- secrets ---------------------------------------------------------------------------------


def test_no_password_shows_in_the_connections_repr_str_or_log_line() -> None:
    connection = RedisConnection.from_config(
        {
            "deployment_mode": "sentinel",
            "endpoints": ["s1:26379"],
            "username": "omnidesk",
            "password": PASSWORD,
            "sentinel_password": PASSWORD + "-sentinel",
        }
    )
    plain = RedisConnection.from_config(f"redis://omnidesk:{PASSWORD}@h:6379/0?db=0")

    for shown in (repr(connection), str(connection), connection.for_logs(), repr(plain)):
        assert PASSWORD not in shown
    assert plain.for_logs() == "redis://omnidesk:***@h:6379/0"


def test_socketio_options_keep_the_password_out_of_the_url() -> None:
    for raw in (
        f"redis://omnidesk:{PASSWORD}@h:6379/0",
        f"redis+sentinel://omnidesk:{PASSWORD}@s1:26379/0/rasa",
        {"deployment_mode": "cluster", "endpoints": ["n1:7000"], "password": PASSWORD},
    ):
        options = socketio_manager_options(RedisConnection.from_config(raw))

        assert PASSWORD not in options.url and PASSWORD not in repr(options)
        assert options.manager_options()["password"] == PASSWORD


# -- what is refused ------------------------------------------------------------------------


def test_db_other_than_0_is_refused_in_cluster_mode() -> None:
    error = refused({"deployment_mode": "cluster", "endpoints": ["n1:7000"], "db": 1})

    assert error.keys == ("db",)
    assert "Redis Cluster has only database 0" in str(error)
    assert "a valid value: 0" in str(error)


def test_sentinel_mode_without_sentinels_is_refused() -> None:
    error = refused({"deployment_mode": "sentinel", "sentinel_service": "rasa"})

    assert error.keys == ("endpoints",)
    assert "must list the sentinels" in str(error)


def test_a_host_beside_sentinels_is_refused_rather_than_ignored() -> None:
    error = refused(
        {"deployment_mode": "sentinel", "endpoints": ["s1:26379"], "host": "redis-master"}
    )

    assert error.keys == ("host",)
    assert "the sentinels name the master" in str(error)


def test_endpoints_without_a_deployment_mode_are_refused() -> None:
    error = refused({"host": "h", "endpoints": ["n1:7000", "n2:7000"]})

    assert error.keys == ("endpoints",)
    assert "set deployment_mode" in str(error)


def test_an_endpoint_without_its_port_is_refused() -> None:
    error = refused({"deployment_mode": "cluster", "endpoints": ["n1:7000", "n2"]})

    assert error.keys == ("endpoints",)
    assert "'n2' is not" in str(error)


def test_tls_files_that_do_not_exist_are_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "ca.crt")

    error = refused({"host": "h", "use_ssl": True, "ssl_ca_certs": missing})

    assert error.keys == ("ssl_ca_certs",)
    assert "no file is there" in str(error) and missing in str(error)


def test_tls_files_without_use_ssl_are_refused(tls_files: Dict[str, str]) -> None:
    error = refused({"host": "h", **tls_files})

    assert error.keys == ("use_ssl",)
    assert "must be true when" in str(error)


def test_a_client_key_without_its_certificate_is_refused(tls_files: Dict[str, str]) -> None:
    error = refused({"host": "h", "use_ssl": True, "ssl_keyfile": tls_files["ssl_keyfile"]})

    assert error.keys == ("ssl_certfile",)


def test_an_unknown_key_is_refused_with_the_key_it_may_mean() -> None:
    error = refused({"host": "h", "sentinel_servce": "rasa"})

    assert error.keys == ("sentinel_servce",)
    assert "did you mean sentinel_service?" in str(error)


def test_a_store_block_of_another_type_is_refused() -> None:
    error = refused({"type": "sql", "host": "h"})

    assert error.keys == ("type",)


def test_a_url_and_keys_that_disagree_are_refused_without_showing_the_password() -> None:
    error = refused({"url": f"rediss://u:{PASSWORD}@h:6380/0", "use_ssl": False, "password": "x"})

    assert set(error.keys) == {"password", "use_ssl"}
    assert "disagrees with the url" in str(error)


def test_a_url_of_another_scheme_is_refused_with_its_password_masked() -> None:
    error = refused(f"http://u:{PASSWORD}@h:6379/0")

    assert error.keys == ("url",)
    assert "http://u:***@h:6379/0" in str(error)


def test_every_problem_of_a_block_is_named_at_once() -> None:
    error = refused(
        {"deployment_mode": "clustr", "port": 70000, "socket_timeout": -1, "password": ["x"]}
    )

    assert error.keys == ("deployment_mode", "port", "password", "socket_timeout")
    assert isinstance(error, ValueError)
    message = str(error)
    assert message.startswith("Redis settings are invalid:")
    assert "redis.deployment_mode must be one of standard, sentinel, cluster" in message
    assert "redis.port must be a port number from 1 to 65535, got 70000" in message


def test_the_message_names_the_setting_the_block_sits_under() -> None:
    with pytest.raises(RedisSettingsError) as raised:
        RedisConnection.from_config({"deployment_mode": "cluster", "db": 2}, setting="switchboard")

    assert str(raised.value).startswith("Redis setting switchboard.db must be 0")
