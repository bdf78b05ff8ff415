"""Redis on TLS only, with client certificates required and an ACL user (the default user
off): the block of Rasa Pro reaches it, and each thing wrong is refused saying what."""

import pytest

from connectors.omnidesk.redis_connection import (
    RedisConnection,
    RedisPing,
    RedisUnavailable,
    check,
    close_client,
    create_client,
    create_pubsub_client,
)
from tests.redis_modes.test_standard import TWO_KEYS, next_message
from tests.redis_servers import TlsRedis

pytestmark = pytest.mark.redis


async def refusal(connection: RedisConnection) -> RedisUnavailable:
    with pytest.raises(RedisUnavailable) as raised:
        await check(connection, timeout=3.0)
    return raised.value


async def test_the_acl_user_with_its_client_certificate_writes_and_runs_scripts(
    tls_redis: TlsRedis, key_prefix: str
) -> None:
    client = create_client(tls_redis.connection())
    try:
        script = client.register_script(TWO_KEYS)

        assert await script(keys=[f"{key_prefix}a", f"{key_prefix}n"], args=["x"]) == 1
        assert await client.get(f"{key_prefix}a") == "x"
    finally:
        await close_client(client)


async def test_a_rediss_url_with_the_files_beside_it_works_too(
    tls_redis: TlsRedis, key_prefix: str
) -> None:
    block = tls_redis.block()
    url = (
        f"rediss://{block.pop('username')}:{block.pop('password')}@localhost:{block.pop('port')}/0"
    )
    block.pop("host")
    block.pop("use_ssl")
    client = create_client(RedisConnection.from_config({"url": url, **block}))
    try:
        await client.set(f"{key_prefix}a", "over tls")

        assert await client.get(f"{key_prefix}a") == "over tls"
    finally:
        await close_client(client)


async def test_pub_sub_works_over_tls(tls_redis: TlsRedis, key_prefix: str) -> None:
    subscriber = create_pubsub_client(tls_redis.connection())
    publisher = create_pubsub_client(tls_redis.connection())
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe(f"{key_prefix}nudge")
        await publisher.publish(f"{key_prefix}nudge", "wake up")

        message = await next_message(pubsub)

        assert message is not None and message["data"] == "wake up"
    finally:
        await pubsub.unsubscribe()
        await close_client(subscriber)
        await close_client(publisher)


async def test_the_health_ping_answers_over_tls(tls_redis: TlsRedis) -> None:
    ping = RedisPing(tls_redis.connection(), timeout=2.0)
    try:
        await ping()
    finally:
        await ping.close()


async def test_a_wrong_password_is_refused_saying_so(tls_redis: TlsRedis) -> None:
    error = await refusal(tls_redis.connection(password="not-the-password"))

    assert error.reason.startswith("refused the credentials")
    assert "not-the-password" not in str(error) and tls_redis.password not in str(error)


async def test_no_user_at_all_is_refused_as_the_default_user_is_off(tls_redis: TlsRedis) -> None:
    error = await refusal(tls_redis.connection(username=None, password=None))

    assert error.reason.startswith("refused the credentials")


async def test_a_client_without_its_certificate_is_refused(tls_redis: TlsRedis) -> None:
    error = await refusal(tls_redis.connection(ssl_certfile=None, ssl_keyfile=None))

    # The server asks for a certificate; without one the handshake or the first read fails.
    assert error.reason.startswith(("TLS failed", "connection failed"))


async def test_a_server_certificate_of_an_unknown_ca_is_refused(tls_redis: TlsRedis) -> None:
    error = await refusal(tls_redis.connection(ssl_ca_certs=None))

    assert error.reason.startswith("TLS failed")
    assert "CERTIFICATE_VERIFY_FAILED" in error.reason


async def test_plain_tcp_to_a_tls_port_fails_rather_than_hangs(tls_redis: TlsRedis) -> None:
    plain = RedisConnection.from_config(
        {
            "host": "127.0.0.1",
            "port": tls_redis.node.port,
            "username": tls_redis.username,
            "password": tls_redis.password,
        }
    )

    error = await refusal(plain)

    assert error.reason in ("connection failed", "no answer within 3 s")
