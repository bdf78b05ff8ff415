"""One running cluster for every cluster test of the session.

``cluster`` is tests/cluster/cluster.py's ``Cluster``: the sandbox, Redis,
PostgreSQL, one action server, two ``rasa run`` replicas with the connector
and nginx in front of them with deploy/'s template, all on loopback. It
starts once per session (10-25 s on two cores, the model trained first
if it is stale) and its logs stay in artifacts/cluster/ for a failing run.

The fixtures: ``cluster`` (session), ``cluster_env`` (session, the replicas'
extra environment), ``callback_inbox`` (session, the callback customers' app
backend), ``cluster_programs`` (session, skips or fails without the programs),
``http`` (an aiohttp session), ``desk`` (the sandbox's agent desk, agents
online and no faults) and ``callback_customer`` (a new callback customer
talking through nginx). The cluster writes its start-up time to
artifacts/cluster/run/startup.txt.

These tests need redis-server, nginx and PostgreSQL (Debian packages
redis-server, nginx, postgresql: ``scripts/bootstrap.sh --system-packages``
installs them); without them they skip, and fail under CI=true.
"""

from pathlib import Path
from typing import AsyncIterator, Dict, Iterator

import aiohttp
import pytest
import pytest_asyncio

from tests.cluster.cluster import Cluster, nginx_program, postgres_bin_dir, redis_program
from tests.conftest import require_program
from tests.e2e.people import CallbackCustomer, Desk, ready_desk
from tests.e2e.receiver import CallbackReceiver
from tests.e2e.stack import ROOT
from tests.redis_servers_fixtures import redis_cluster  # noqa: F401 -- a fixture, by name

ARTIFACTS = ROOT / "artifacts" / "cluster"

# Give up quickly when a test makes the sandbox fail every call.
FAST_FAILURE_ENV = {
    "OMNIDESK_MAX_ATTEMPTS": "2",
    "OMNIDESK_BACKOFF_BASE": "0.05",
    "OMNIDESK_BACKOFF_MAX": "0.1",
    "OMNIDESK_REQUEST_TIMEOUT": "5",
    "OMNIDESK_RETRY_BUDGET": "10",
}


@pytest.fixture(scope="session")
def cluster_programs() -> Dict[str, str]:
    """The outside programs the cluster runs; skips (fails under CI=true) naming the package."""
    pg_bin = postgres_bin_dir()
    return {
        "redis-server": require_program("redis-server", "redis-server", redis_program()),
        "nginx": require_program("nginx", "nginx", nginx_program()),
        "initdb": require_program(
            "initdb", "postgresql", str(pg_bin / "initdb") if pg_bin else None
        ),
    }


@pytest.fixture(scope="session")
def cluster_artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def callback_inbox() -> Iterator[CallbackReceiver]:
    """The callback customers' app backend (Rasa's callback channel posts here)."""
    receiver = CallbackReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="session")
def cluster_env() -> Dict[str, str]:
    """Extra environment of the replicas and the action server (override it to change it)."""
    return dict(FAST_FAILURE_ENV)


@pytest.fixture(scope="session")
def cluster(
    cluster_programs: Dict[str, str],
    callback_inbox: CallbackReceiver,
    cluster_artifacts: Path,
    cluster_env: Dict[str, str],
) -> Iterator[Cluster]:
    started = Cluster.start(
        log_dir=cluster_artifacts / "run",
        callback_url=callback_inbox.url,
        env=cluster_env,
        timeout=240,
    )
    (started.log_dir / "startup.txt").write_text(f"{started.startup_seconds:.1f} s\n")
    try:
        yield started
    finally:
        started.stop()


@pytest_asyncio.fixture
async def desk(cluster: Cluster, http: aiohttp.ClientSession) -> AsyncIterator[Desk]:
    """The agent's desk on the cluster's sandbox, agents online and no faults, before and after."""
    cluster.check_alive()
    async with ready_desk(cluster.sandbox_url, http) as agent_desk:
        yield agent_desk


@pytest.fixture
def callback_customer(
    cluster: Cluster, http: aiohttp.ClientSession, callback_inbox: CallbackReceiver
) -> CallbackCustomer:
    """A new callback customer talking to the cluster through nginx."""
    return CallbackCustomer(cluster.proxy_url, http, callback_inbox)
