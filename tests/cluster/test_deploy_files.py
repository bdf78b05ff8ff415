"""deploy/ is what the cluster tests run: the compose file mounts the tested nginx template.

Docker is not used here; the compose file is read as YAML and checked against
the template, the endpoints the tests generate and docs/deployment.md.
"""

import re
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from tests.cluster.cluster import (
    DEPLOY,
    NGINX_TEMPLATE,
    render_nginx_template,
    template_placeholders,
)
from tests.e2e.stack import ROOT

pytestmark = pytest.mark.cluster

COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {"nginx", "redis", "postgres", "action-server", "rasa-a", "rasa-b"}
REPLICAS = ("rasa-a", "rasa-b")
NGINX_TEMPLATE_TARGET = "/etc/nginx/templates/default.conf.template"
FILES_DIR = "/var/lib/rasa-omnidesk/files"


@pytest.fixture(scope="module")
def compose() -> Dict[str, Any]:
    loaded: Dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def mounts(service: Dict[str, Any]) -> Dict[str, str]:
    """target -> source of a service's short-syntax volumes (``source:target[:mode]``)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def host_path(source: str) -> Path:
    return (COMPOSE.parent / source).resolve()


def test_the_services_are_there(compose: Dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_nginx_mounts_the_template_the_tests_run(compose: Dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    source = mounts(nginx)[NGINX_TEMPLATE_TARGET]
    assert host_path(source) == NGINX_TEMPLATE.resolve()
    # Every placeholder of the template has its value, naming the replica services.
    environment = nginx["environment"]
    assert set(template_placeholders()) == {"RASA_A", "RASA_B", "PROXY_LISTEN"}
    assert set(template_placeholders()) <= set(environment)
    assert [environment["RASA_A"], environment["RASA_B"]] == [f"{r}:5005" for r in REPLICAS]
    rendered = render_nginx_template({k: str(v) for k, v in environment.items()})
    assert "server rasa-a:5005" in rendered and "listen 80;" in rendered
    # Only nginx publishes a port.
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"nginx"}


def test_the_replicas_share_the_stores_and_the_files(compose: Dict[str, Any]) -> None:
    services = compose["services"]
    for name in REPLICAS:
        replica = services[name]
        env = replica["environment"]
        assert env["OMNIDESK_SWITCHBOARD_URL"].startswith("redis://redis:6379/")
        assert env["SANIC_WORKERS"] == "1"
        assert env["OMNIDESK_FILES_DIR"] == FILES_DIR
        volumes = mounts(replica)
        # A named volume (shared by both replicas), not a directory of each container.
        assert volumes[FILES_DIR] in compose["volumes"]
        command = replica["command"]
        endpoints = host_path(volumes[command[command.index("--endpoints") + 1]])
        credentials = host_path(volumes[command[command.index("--credentials") + 1]])
        assert endpoints == DEPLOY / "endpoints.yml"
        assert "connectors.omnidesk.OmnideskInput" in yaml.safe_load(credentials.read_text())
        assert "--enable-api" not in command
        assert not replica.get("ports")
    assert services["rasa-a"] == services["rasa-b"]
    assert services["action-server"]["environment"] == services["rasa-a"]["environment"]


def test_the_endpoints_name_the_stores_the_tests_run() -> None:
    endpoints = yaml.safe_load((DEPLOY / "endpoints.yml").read_text())
    tracker_store = endpoints["tracker_store"]
    assert (tracker_store["type"], tracker_store["dialect"]) == ("sql", "postgresql")
    assert tracker_store["url"] == "postgres"
    # Rasa 3.6.21 knows `redis`; `concurrent_redis` is a later (Pro) lock store.
    assert endpoints["lock_store"]["type"] == "redis"
    assert endpoints["lock_store"]["url"] == "redis"
    assert endpoints["action_endpoint"]["url"] == "http://action-server:5055/webhook"


def test_every_required_variable_is_in_the_env_example() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required and required <= example


def test_the_deployment_doc_names_the_parts() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    for name in [
        *sorted(SERVICES),
        "deploy/docker-compose.yml",
        "deploy/nginx/rasa-omnidesk.conf.template",
        "OMNIDESK_SWITCHBOARD_URL",
        "OMNIDESK_FILES_DIR",
        "SANIC_WORKERS",
        "OMNIDESK_PUBLIC_URL",
        "OMNIDESK_MAX_UPLOAD_BYTES",
        "client_max_body_size",
        "Content-Length: -1",
        "concurrent_redis",
        "type: redis",
        "dialect: postgresql",
    ]:
        assert name in doc, f"docs/deployment.md does not mention {name}"
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()


# The overrides that put the switchboard on a Sentinel group or a Cluster.
REDIS_OVERRIDES = {
    "sentinel": DEPLOY / "docker-compose.sentinel.yml",
    "cluster": DEPLOY / "docker-compose.cluster.yml",
}


@pytest.mark.parametrize("mode", sorted(REDIS_OVERRIDES))
def test_a_redis_override_gives_every_replica_a_block_the_connector_takes(
    mode: str, compose: Dict[str, Any]
) -> None:
    from connectors.omnidesk.redis_connection import RedisMode
    from connectors.omnidesk.settings import OmnideskSettings

    override: Dict[str, Any] = yaml.safe_load(REDIS_OVERRIDES[mode].read_text())
    services = override["services"]
    base_env = compose["services"]["rasa-a"]["environment"]
    for name in ("action-server", *REPLICAS):
        env = {**base_env, **services[name]["environment"]}
        # What compose hands the process: the required variables filled in, the
        # switchboard URL emptied (an empty variable counts as not set).
        filled = {
            key: "https://bot.example.com"
            if key.endswith("_URL") and value
            else "AccountToken1234567890"
            if "TOKEN" in key
            else "hookpoint-secret-0123456789abcdef"
            if key == "OMNIDESK_HOOKPOINT_SECRET"
            else str(value)
            for key, value in env.items()
        }
        assert filled["OMNIDESK_SWITCHBOARD_URL"] == ""
        settings = OmnideskSettings.from_env(filled)
        connection = settings.redis_connection
        assert connection is not None and connection.mode is RedisMode(mode), name
        assert settings.redis_wait_replicas == 1
    # Every address the block names is a service of the override.
    for address in connection.endpoints:
        assert address.host in services, f"{address.host} is no service of {mode}"
    if mode == "sentinel":
        command = " ".join(services["sentinel-0"]["command"])
        assert f"sentinel monitor {connection.service} redis-master 6379 2" in command
    assert (
        str(REDIS_OVERRIDES[mode].relative_to(ROOT))
        in (ROOT / "docs" / "deployment.md").read_text()
    )
