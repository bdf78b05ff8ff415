"""The Redis deployments these tests run against (tests/redis_servers_fixtures.py)."""

from tests.redis_servers_fixtures import (  # noqa: F401 -- pytest finds fixtures by name
    fresh_sentinel_group,
    key_prefix,
    plain_redis,
    redis_cluster,
    sentinel_group,
    tls_redis,
)
