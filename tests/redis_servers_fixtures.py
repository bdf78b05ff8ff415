"""pytest fixtures for the Redis deployments of tests/redis_servers.py.

A conftest that wants them imports them by name. The deployments are
session-scoped, started on first use and shared: tests stay independent by
writing under their own ``key_prefix`` (a fresh hash tag, so a cluster test's keys
share one slot). A test that breaks its deployment (a failover) takes a
``fresh_sentinel_group`` of its own.
"""

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require_program
from tests.redis_servers import PlainRedis, RedisClusterServers, SentinelGroup, TlsRedis


def _redis_server() -> str:
    return require_program("redis-server", "redis-server")


@pytest.fixture
def key_prefix() -> str:
    """``{t-<random>}:``: this test's keys, all in one cluster hash slot."""
    return f"{{t-{uuid.uuid4().hex[:12]}}}:"


@pytest.fixture(scope="session")
def plain_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainRedis]:
    """One redis-server on a free loopback port, shared by the session."""
    with PlainRedis.start(_redis_server(), tmp_path_factory.mktemp("redis-plain")) as redis:
        yield redis


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 masters with a replica each, shared by the session."""
    program = _redis_server()
    cli = require_program("redis-cli", "redis-tools")
    with RedisClusterServers.start(
        program, cli, tmp_path_factory.mktemp("redis-cluster")
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A master, a replica and 3 sentinels, shared by the tests that fail nothing over."""
    with SentinelGroup.start(_redis_server(), tmp_path_factory.mktemp("redis-sentinel")) as group:
        yield group


@pytest.fixture
def fresh_sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A Sentinel group of this test's own, for a test that kills its master."""
    with SentinelGroup.start(_redis_server(), tmp_path / "redis-sentinel") as group:
        yield group


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """redis-server on TLS only, client certificates required, an ACL user, default user off."""
    program = _redis_server()
    openssl = require_program("openssl", "openssl")
    with TlsRedis.start(program, openssl, tmp_path_factory.mktemp("redis-tls")) as redis:
        yield redis
