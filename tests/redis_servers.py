"""Redis as production runs it, on loopback, for tests: one server, a Cluster, a Sentinel
group, and a TLS server with an ACL user.

Every server is a real redis-server (Debian's) on 127.0.0.1 and a free port, in its
own process group, with its log and working directory under the directory it is
given; nothing is saved to disk (``redis_command`` of tests/e2e/stack.py) except
a cluster node's own nodes.conf. Each start waits, bounded, until the deployment
is usable (a cluster with every slot served and every replica in sync, sentinels
that know the replica and each other), and raises ``StackError`` with the log's
tail when it is not. ``stop()`` ends every process; a test run that ends without
its teardown still stops them (atexit).

``started_in`` on each deployment says how long its start took, in seconds.
tests/redis_servers_fixtures.py shares them between tests as pytest fixtures.
"""

import atexit
import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TypeVar

from connectors.omnidesk.redis_connection import RedisAddress, RedisConnection
from tests.e2e.stack import (
    Process,
    StackError,
    base_env,
    free_port,
    launch,
    log_tail,
    redis_command,
)

START_TIMEOUT = 30.0
# Fast enough that a test's failover takes a few seconds, slow enough that a busy
# machine does not fail a healthy master over.
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 5000
CLUSTER_NODE_TIMEOUT_MS = 2000
SENTINEL_SERVICE = "omnidesk-test"

# A full sync to a new replica starts at once instead of after redis' 5 s wait.
_REPLICATION_ARGS = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]


class RedisServerError(StackError):
    """A Redis deployment could not be started or did not become usable in time."""


@dataclass
class RedisNode:
    """One redis-server (or sentinel) process on 127.0.0.1:``port``; it can be killed and
    started again on the same port with the same command."""

    name: str
    port: int
    command: List[str]
    directory: Path
    process: Optional[Process] = None
    # How a check speaks to it: TLS files, the ACL user. Keys of redis.Redis().
    client_options: Dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> RedisAddress:
        return RedisAddress("127.0.0.1", self.port)

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def start(self, deadline: float, extra: Sequence[str] = ()) -> None:
        """Start it (again) with its command and ``extra`` arguments; wait for its PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = launch(
            self.name, [*self.command, *extra], self.log, base_env(), cwd=self.directory
        )
        while True:
            if not self.process.alive:
                raise self.failure(f"exited (status {self.process.popen.returncode}) on start")
            with contextlib.suppress(Exception):
                if self.call("PING") in (True, "PONG"):
                    return
            if time.monotonic() > deadline:
                raise self.failure("did not answer PING in time")
            time.sleep(0.05)

    def call(self, *command: Any, timeout: float = 2.0) -> Any:
        """One command on a connection of its own (the synchronous client: fixtures only)."""
        import redis

        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            **self.client_options,
        )
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def info(self, section: str) -> Dict[str, Any]:
        found: Dict[str, Any] = self.call("INFO", section)
        return found

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last word to replicas or sentinels."""
        if self.process is not None:
            self.process.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.popen.wait(5)
            self.process.stopped = True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)

    def failure(self, problem: str) -> RedisServerError:
        return RedisServerError(
            f"{self.name} (127.0.0.1:{self.port}) {problem}; its log is {self.log}. "
            f"The last lines:\n{log_tail(self.log)}"
        )


def _redis_node(
    program: str, name: str, directory: Path, extra: Sequence[str], port: Optional[int] = None
) -> RedisNode:
    port = port or free_port()
    command = [*redis_command(program, port), "--dir", str(directory), *extra]
    return RedisNode(name=name, port=port, command=command, directory=directory)


def _wait(what: str, ready: Any, deadline: float, nodes: Sequence[RedisNode]) -> None:
    """Poll ``ready()`` until true; past ``deadline`` raise naming ``what`` with the logs."""
    last: Optional[BaseException] = None
    while True:
        try:
            if ready():
                return
        except Exception as error:  # a node still starting answers with errors; keep the last
            last = error
        for node in nodes:
            if node.process is not None and not node.process.stopped and not node.alive:
                raise node.failure(f"exited while waiting for {what}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {node.name}:\n{log_tail(node.log, 10)}" for node in nodes)
            raise RedisServerError(f"{what} did not happen in time (last error: {last!r})\n{logs}")
        time.sleep(0.1)


_D = TypeVar("_D", bound="Deployment")


class Deployment:
    """What every deployment shares: its nodes, stopping them, its start time."""

    nodes: List[RedisNode]
    started_in: float = 0.0

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- one server ----------------------------------------------------------------------------


class PlainRedis(Deployment):
    """One redis-server, as the switchboard has used so far."""

    def __init__(self, program: str, directory: Path) -> None:
        self.node = _redis_node(program, "redis-server", directory, [])
        self.nodes = [self.node]

    @classmethod
    def start(cls, program: str, directory: Path, timeout: float = START_TIMEOUT) -> "PlainRedis":
        began = time.monotonic()
        redis = cls(program, directory)
        atexit.register(redis.stop)
        try:
            redis.node.start(began + timeout)
        except BaseException:
            redis.stop()
            raise
        redis.started_in = time.monotonic() - began
        return redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.node.port}/0"

    def connection(self, **block: Any) -> RedisConnection:
        return RedisConnection.from_config({"host": "127.0.0.1", "port": self.node.port, **block})


# -- Redis Cluster ------------------------------------------------------------------------


class RedisClusterServers(Deployment):
    """A Redis Cluster: ``masters`` masters with ``replicas`` replicas each, made by
    ``redis-cli --cluster create``."""

    def __init__(
        self, program: str, cli: str, directory: Path, masters: int = 3, replicas: int = 1
    ) -> None:
        self.cli = cli
        self.directory = directory
        self.masters_wanted = masters
        self.replicas = replicas
        self.nodes = [
            _redis_node(
                program,
                f"cluster-node-{index}",
                directory / f"node-{index}",
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(CLUSTER_NODE_TIMEOUT_MS),
                    # The bus port is the port + 10000 unless said, maybe taken or ephemeral.
                    "--cluster-port",
                    str(free_port()),
                    *_REPLICATION_ARGS,
                ],
            )
            for index in range(masters * (1 + replicas))
        ]

    @classmethod
    def start(
        cls,
        program: str,
        cli: str,
        directory: Path,
        masters: int = 3,
        replicas: int = 1,
        timeout: float = START_TIMEOUT,
    ) -> "RedisClusterServers":
        began = time.monotonic()
        deadline = began + timeout
        cluster = cls(program, cli, directory, masters, replicas)
        atexit.register(cluster.stop)
        try:
            for node in cluster.nodes:
                node.start(deadline)
            cluster._create(deadline)
            cluster.wait_healthy(deadline)
        except BaseException:
            cluster.stop()
            raise
        cluster.started_in = time.monotonic() - began
        return cluster

    def _create(self, deadline: float) -> None:
        created = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(str(node.address) for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=max(deadline - time.monotonic(), 1.0),
            check=False,
        )
        if created.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed (exit {created.returncode}):\n"
                f"{created.stdout[-2000:]}\n{created.stderr[-2000:]}"
            )

    def wait_healthy(self, deadline: float) -> None:
        """Every live node says cluster_state:ok and knows every node; every replica is in sync."""
        live = [node for node in self.nodes if node.alive]

        def healthy() -> bool:
            for node in live:
                info = cluster_info(node)
                if info.get("cluster_state") != "ok":
                    return False
                if int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                    return False
                replication = node.info("replication")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                ):
                    return False
            return True

        _wait("cluster_state:ok on every node", healthy, deadline, live)

    def masters(self) -> List[RedisNode]:
        return [
            node
            for node in self.nodes
            if node.alive and node.info("replication")["role"] == "master"
        ]

    def replicas_of_cluster(self) -> List[RedisNode]:
        return [
            node
            for node in self.nodes
            if node.alive and node.info("replication")["role"] == "slave"
        ]

    def node_at(self, address: RedisAddress) -> RedisNode:
        return next(node for node in self.nodes if node.port == address.port)

    def connection(
        self, endpoints: Optional[Sequence[RedisNode]] = None, **block: Any
    ) -> RedisConnection:
        """A cluster block listing ``endpoints`` (every node unless said) as startup nodes."""
        chosen = self.nodes if endpoints is None else endpoints
        return RedisConnection.from_config(
            {
                "deployment_mode": "cluster",
                "endpoints": [str(node.address) for node in chosen],
                **block,
            }
        )


def cluster_info(node: RedisNode) -> Dict[str, str]:
    """CLUSTER INFO as a dict (redis-py parses it or not, depending on its version)."""
    raw = node.call("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return {str(key): str(value) for key, value in raw.items()}
    return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)


# -- Sentinel ------------------------------------------------------------------------------


class SentinelGroup(Deployment):
    """A master, a replica and three sentinels (quorum 2) watching service ``SENTINEL_SERVICE``.

    Down after ``SENTINEL_DOWN_AFTER_MS``, so ``kill_master()`` then
    ``wait_for_new_master()`` takes a few seconds.
    """

    def __init__(self, program: str, directory: Path, sentinels: int = 3) -> None:
        self.program = program
        self.directory = directory
        self.service = SENTINEL_SERVICE
        self.master = _redis_node(
            program, "sentinel-master", directory / "master", _REPLICATION_ARGS
        )
        self.replica = _redis_node(
            program,
            "sentinel-replica",
            directory / "replica",
            [*_REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(self.master.port)],
        )
        self.sentinels = [self._sentinel(index) for index in range(sentinels)]
        self.nodes = [self.master, self.replica, *self.sentinels]
        self.killed: Optional[RedisNode] = None

    def _sentinel(self, index: int) -> RedisNode:
        port = free_port()
        directory = self.directory / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"
        # Sentinel rewrites its file as it learns the group: it must be its own and writable.
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {directory}",
                    f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2",
                    f"sentinel down-after-milliseconds {self.service} {SENTINEL_DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {self.service} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {self.service} 1",
                    "",
                ]
            )
        )
        return RedisNode(
            name=f"sentinel-{index}",
            port=port,
            command=[self.program, str(config), "--sentinel"],
            directory=directory,
        )

    @classmethod
    def start(
        cls, program: str, directory: Path, timeout: float = START_TIMEOUT
    ) -> "SentinelGroup":
        began = time.monotonic()
        deadline = began + timeout
        group = cls(program, directory)
        atexit.register(group.stop)
        try:
            group.master.start(deadline)
            group.replica.start(deadline)
            _wait(
                "the replica's sync with the master",
                lambda: group.replica.info("replication").get("master_link_status") == "up",
                deadline,
                [group.master, group.replica],
            )
            for sentinel in group.sentinels:
                sentinel.start(deadline)
            group.wait_sentinels_agree(deadline)
        except BaseException:
            group.stop()
            raise
        group.started_in = time.monotonic() - began
        return group

    def _sentinel_view(self, sentinel: RedisNode) -> Dict[str, str]:
        raw = sentinel.call("SENTINEL", "MASTER", self.service)
        if isinstance(raw, dict):
            return {str(key): str(value) for key, value in raw.items()}
        return {str(raw[index]): str(raw[index + 1]) for index in range(0, len(raw), 2)}

    def wait_sentinels_agree(self, deadline: float) -> None:
        """Every live sentinel knows the master, its replicas and the other sentinels.

        A failover needs a majority of the sentinels to know each other, which they
        learn from each other's hellos (every 2 s): until then a kill is not acted on.
        """
        live_sentinels = [sentinel for sentinel in self.sentinels if sentinel.alive]
        replicas = sum(1 for node in (self.master, self.replica) if node.alive) - 1

        def agreed() -> bool:
            master = self.current_master()
            for sentinel in live_sentinels:
                view = self._sentinel_view(sentinel)
                if int(view["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
                if int(view["num-slaves"]) < replicas:
                    return False
                if int(view["port"]) != master.port or "down" in view["flags"]:
                    return False
            return True

        _wait("the sentinels' agreement", agreed, deadline, [*live_sentinels])

    def current_master(self) -> RedisAddress:
        """The master a majority of the live sentinels name."""
        named: Dict[RedisAddress, int] = {}
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            with contextlib.suppress(Exception):
                host, port = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                address = RedisAddress(str(host), int(port))
                named[address] = named.get(address, 0) + 1
        if not named:
            raise RedisServerError("no sentinel names a master")
        return max(named, key=lambda address: named[address])

    def node_at(self, address: RedisAddress) -> RedisNode:
        return next(node for node in (self.master, self.replica) if node.port == address.port)

    def kill_master(self) -> RedisNode:
        """SIGKILL the current master; returns its node (``restart_old_master`` brings it back)."""
        node = self.node_at(self.current_master())
        node.kill()
        self.killed = node
        return node

    def wait_for_new_master(self, timeout: float = 30.0) -> RedisAddress:
        """Wait until every live sentinel names a master other than the killed one, and it
        says it is a master. Returns its address."""
        assert self.killed is not None, "kill_master() first"
        old = self.killed.address
        found: List[RedisAddress] = []

        def promoted() -> bool:
            names = set()
            for sentinel in self.sentinels:
                if sentinel.alive:
                    host, port = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                    names.add(RedisAddress(str(host), int(port)))
            if len(names) != 1 or old in names:
                return False
            (address,) = names
            if self.node_at(address).info("replication").get("role") != "master":
                return False
            found[:] = [address]
            return True

        _wait("the promotion of a new master", promoted, time.monotonic() + timeout, self.sentinels)
        return found[0]

    def restart_old_master(self, timeout: float = 30.0) -> RedisNode:
        """Start the killed master again, as a replica of the new master, as an operator
        would: it is empty (nothing was saved), and as a master it would wait up to 10 s
        for the sentinels to turn it into one. Returns once it is in sync."""
        assert self.killed is not None, "kill_master() first"
        node = self.killed
        deadline = time.monotonic() + timeout
        master = self.current_master()
        node.start(deadline, extra=["--replicaof", master.host, str(master.port)])
        _wait(
            "the old master's return as a replica",
            lambda: node.info("replication").get("master_link_status") == "up",
            deadline,
            [node, *self.sentinels],
        )
        self.killed = None
        return node

    def connection(self, **block: Any) -> RedisConnection:
        return RedisConnection.from_config(
            {
                "deployment_mode": "sentinel",
                "endpoints": [str(sentinel.address) for sentinel in self.sentinels],
                "sentinel_service": self.service,
                **block,
            }
        )


# -- TLS with an ACL user -----------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A test CA, a server certificate (localhost, 127.0.0.1) and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(openssl: str, directory: Path, days: int = 2) -> TlsFiles:
    """Make the CA and both certificates with the openssl command (EC P-256 keys: fast)."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        done = subprocess.run(
            [openssl, *args],
            cwd=directory,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RedisServerError(f"openssl {args[0]} failed: {done.stderr[-2000:]}")

    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *key_options,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        str(days),
        "-subj",
        "/CN=rasa-omnidesk test CA",
    )
    for name, usage, subject in (
        ("server", "serverAuth", "/CN=localhost"),
        ("client", "clientAuth", "/CN=omnidesk"),
    ):
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\n"
            + ("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if name == "server" else "")
        )
        run(
            "req",
            "-new",
            *key_options,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            str(days),
            "-extfile",
            f"{name}.ext",
        )
    return TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


class TlsRedis(Deployment):
    """redis-server speaking only TLS (``--port 0``) with an ACL user; the default user is off.

    ``auth_clients``: ``yes`` asks every client for a certificate of the test CA,
    ``optional`` checks one only when given.
    """

    username = "omnidesk"

    def __init__(
        self, program: str, openssl: str, directory: Path, auth_clients: str = "yes"
    ) -> None:
        import secrets

        self.password = secrets.token_hex(16)
        self.tls = make_tls_files(openssl, directory / "tls")
        port = free_port()
        self.node = RedisNode(
            name="redis-server-tls",
            port=port,
            command=[
                program,
                "--port",
                "0",
                "--tls-port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--tls-cert-file",
                str(self.tls.server_cert),
                "--tls-key-file",
                str(self.tls.server_key),
                "--tls-ca-cert-file",
                str(self.tls.ca_cert),
                "--tls-auth-clients",
                auth_clients,
                "--user",
                "default",
                "off",
                "--user",
                self.username,
                "on",
                f">{self.password}",
                "~*",
                "&*",
                "+@all",
            ],
            directory=directory,
            client_options={
                "ssl": True,
                "ssl_ca_certs": str(self.tls.ca_cert),
                "ssl_certfile": str(self.tls.client_cert),
                "ssl_keyfile": str(self.tls.client_key),
                "username": self.username,
                "password": self.password,
            },
        )
        self.nodes = [self.node]

    @classmethod
    def start(
        cls,
        program: str,
        openssl: str,
        directory: Path,
        auth_clients: str = "yes",
        timeout: float = START_TIMEOUT,
    ) -> "TlsRedis":
        began = time.monotonic()
        redis = cls(program, openssl, directory, auth_clients)
        atexit.register(redis.stop)
        try:
            redis.node.start(began + timeout)
        except BaseException:
            redis.stop()
            raise
        redis.started_in = time.monotonic() - began
        return redis

    def block(self, **override: Any) -> Dict[str, Any]:
        """Rasa Pro's block for it: TLS with the client certificate, the ACL user."""
        return {
            "host": "127.0.0.1",
            "port": self.node.port,
            "username": self.username,
            "password": self.password,
            "use_ssl": True,
            "ssl_ca_certs": str(self.tls.ca_cert),
            "ssl_certfile": str(self.tls.client_cert),
            "ssl_keyfile": str(self.tls.client_key),
            **override,
        }

    def connection(self, **override: Any) -> RedisConnection:
        block = {key: value for key, value in self.block(**override).items() if value is not None}
        return RedisConnection.from_config(block)
