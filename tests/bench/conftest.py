"""The Redis Cluster the counter's test sums over (tests/redis_servers_fixtures.py)."""

from tests.redis_servers_fixtures import (  # noqa: F401 -- pytest finds fixtures by name
    key_prefix,
    redis_cluster,
)
