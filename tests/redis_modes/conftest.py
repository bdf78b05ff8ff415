"""The Redis deployments these tests run against (tests/redis_servers_fixtures.py), and the
sandbox the channel-level tests use as Omnidesk (tests/channel/conftest.py)."""

from tests.channel.conftest import sandbox  # noqa: F401 -- pytest finds fixtures by name
from tests.redis_servers_fixtures import (  # noqa: F401 -- pytest finds fixtures by name
    fresh_sentinel_group,
    key_prefix,
    plain_redis,
    redis_cluster,
    sentinel_group,
    sentinel_group_of_two_replicas,
    tls_redis,
)
