"""Several Rasa replicas behind nginx, with Redis and PostgreSQL, on free loopback ports.

``Cluster.start(...)`` launches, each in its own process group and logging to
its own file under ``log_dir``:

- the Omnidesk sandbox, calling the hookpoints through nginx,
- redis-server (the connector's switchboard, db 0; Rasa's lock store, db 1),
- PostgreSQL, a throwaway cluster made with initdb (Rasa's SQL tracker store),
- one action server,
- two ``rasa run`` replicas with the same model, credentials and endpoints.yml
  (``tracker_store: sql``/postgresql, ``lock_store: redis``),
  ``OMNIDESK_SWITCHBOARD_URL`` pointing at the Redis above, one
  ``OMNIDESK_FILES_DIR`` for both and ``SANIC_WORKERS=1``,
- nginx, as a foreground process, with deploy/nginx/rasa-omnidesk.conf.template
  filled in (``render_nginx_template``): the file users deploy is the one tested.

Everything listens on 127.0.0.1 only. Every wait is bounded; a part that dies
or does not answer raises ``StackError`` naming it, with the tail of its log,
and everything started so far is stopped. ``stop()`` (or leaving ``with
cluster:``) stops it all, nginx first, and removes PostgreSQL's data; it is also
registered with atexit. A watchdog process stops everything if the test process
dies without doing so (killed, or a ``timeout`` that sends SIGTERM), or when the
cluster has run ``max_seconds`` (an hour by default).

Rasa 3.6.21 has one Redis lock store, ``type: redis`` (RedisLockStore);
``concurrent_redis`` is a later Rasa's.
"""

import atexit
import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from tests.e2e.stack import (
    ROOT,
    Process,
    StackError,
    base_env,
    ensure_model,
    free_port,
    launch,
    new_hookpoint_secret,
    omnidesk_env,
    rasa_run_command,
    redis_command,
    start_action_server,
    start_sandbox,
    wait_http,
    write_credentials,
)

DEPLOY = ROOT / "deploy"
NGINX_TEMPLATE = DEPLOY / "nginx" / "rasa-omnidesk.conf.template"
NGINX_PLACEHOLDERS = ("RASA_A", "RASA_B", "PROXY_LISTEN")
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_USER = "rasa"
POSTGRES_DB = "rasa"
SWITCHBOARD_DB = 0
LOCK_STORE_DB = 1
SERVICE_TIMEOUT = 30.0

# What every replica gets unless the caller says otherwise: one Sanic worker
# (the in-memory parts of the connector are per process).
REPLICA_ENV = {"SANIC_WORKERS": "1"}


# -- the programs -----------------------------------------------------------------------


def postgres_bin_dir() -> Optional[Path]:
    """Where initdb, pg_ctl and postgres are: Debian's newest version, or on PATH."""

    def version(path: str) -> int:
        found = re.search(r"/(\d+)/bin$", path)
        return int(found.group(1)) if found else 0

    for candidate in sorted(glob.glob(POSTGRES_BIN_GLOB), key=version, reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def nginx_program() -> Optional[str]:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(path)),
        None,
    )


def redis_program() -> Optional[str]:
    return shutil.which("redis-server")


def wait_tcp(process: Process, port: int, deadline: float) -> None:
    while True:
        if not process.alive:
            raise process.failure(f"exited (status {process.popen.returncode}) while starting")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        if time.monotonic() > deadline:
            raise process.failure(f"did not listen on 127.0.0.1:{port} in time")
        time.sleep(0.05)


# -- the watchdog ---------------------------------------------------------------------------

# Run as its own process: waits while the test process lives (and at most
# ``limit`` seconds), then stops every process group named in the state file and
# removes its directories. Only a test process killed without its teardown
# (SIGKILL, SIGTERM from a timeout) or a run past the limit lets it act.
WATCHDOG_SCRIPT = """
import json, os, shutil, signal, sys, time
parent, state, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
began = time.monotonic()
while os.getppid() == parent and time.monotonic() - began < limit:
    time.sleep(0.5)
try:
    with open(state) as file:
        todo = json.load(file)
except (OSError, ValueError):
    todo = {"groups": [], "remove": []}
def signal_all(signum):
    alive = False
    for group in todo["groups"]:
        try:
            os.killpg(group, signum)
            alive = True
        except OSError:
            pass
    return alive
signal_all(signal.SIGTERM)
deadline = time.monotonic() + 5
while time.monotonic() < deadline and signal_all(0):
    time.sleep(0.2)
signal_all(signal.SIGKILL)
time.sleep(0.5)
for path in todo["remove"]:
    shutil.rmtree(path, ignore_errors=True)
print("watchdog: stopped", todo["groups"], flush=True)
"""
DEFAULT_MAX_SECONDS = 3600.0


@dataclass
class Watchdog:
    """Stops the cluster's processes if the test process dies without stopping them."""

    process: Process
    state: Path

    @classmethod
    def start(cls, log_dir: Path, limit: float) -> "Watchdog":
        state = log_dir / "watchdog.json"
        state.write_text(json.dumps({"groups": [], "remove": []}))
        process = launch(
            "the cluster's watchdog",
            [sys.executable, "-c", WATCHDOG_SCRIPT, str(os.getpid()), str(state), str(limit)],
            log_dir / "watchdog.log",
            base_env(),
        )
        return cls(process=process, state=state)

    def watch(self, processes: Sequence[Process], remove: Sequence[Path] = ()) -> None:
        """From now on, these process groups (each process leads its own) and directories."""
        todo = {
            "groups": [p.popen.pid for p in processes if not p.stopped],
            "remove": [str(path) for path in remove],
        }
        scratch = self.state.with_suffix(".tmp")
        scratch.write_text(json.dumps(todo))
        os.replace(scratch, self.state)

    def stop(self) -> None:
        """Before a normal stop: the watchdog goes first, touching nothing."""
        self.process.stop()


# -- Redis ---------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """redis-server on 127.0.0.1:``port``, nothing saved to disk."""

    process: Process
    port: int

    def url(self, db: int = SWITCHBOARD_DB) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @classmethod
    def start(cls, log: Path, deadline: float, program: Optional[str] = None) -> "RedisServer":
        program = program or redis_program()
        if program is None:
            raise StackError("redis-server not found: apt-get install redis-server")
        port = free_port()
        process = launch(
            "redis-server",
            redis_command(program, port),
            log,
            base_env(),
        )
        try:
            wait_tcp(process, port, deadline)
        except BaseException:
            process.stop()
            raise
        return cls(process=process, port=port)

    def stop(self) -> None:
        self.process.stop()


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:``port`` with database ``rasa``.

    initdb makes it in a temporary directory; as root, initdb and postgres run
    as the ``postgres`` user (PostgreSQL refuses root) and the directory is
    theirs. Fsync is off: nothing here needs to survive a crash of the machine.
    ``stop()`` shuts it down fast (SIGINT) and removes the directory.
    """

    process: Process
    port: int
    password: str = field(repr=False)
    data_root: Path
    user: str = POSTGRES_USER
    database: str = POSTGRES_DB

    @property
    def dsn(self) -> str:
        """For psycopg2.connect: ``host=127.0.0.1 port=... dbname=rasa ...``."""
        return (
            f"host=127.0.0.1 port={self.port} dbname={self.database} "
            f"user={self.user} password={self.password}"
        )

    def connect(self) -> Any:
        """A psycopg2 connection to the tracker database, autocommit on; close it yourself."""
        import psycopg2

        connection = psycopg2.connect(self.dsn, connect_timeout=5)
        connection.autocommit = True
        return connection

    def tracker_store(self) -> Dict[str, Any]:
        """endpoints.yml's ``tracker_store`` for Rasa's SQLTrackerStore on this server."""
        return {
            "type": "sql",
            "dialect": "postgresql",
            "url": "127.0.0.1",
            "port": self.port,
            "username": self.user,
            "password": self.password,
            "db": self.database,
        }

    def events(self, sender_id: str) -> List[Dict[str, Any]]:
        """The tracker's events as Rasa stored them (table ``events``), oldest first."""
        import json

        with contextlib.closing(self.connect()) as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT data FROM events WHERE sender_id = %s ORDER BY id",
                (sender_id,),
            )
            return [json.loads(row[0]) for row in cursor.fetchall()]

    @classmethod
    def start(
        cls, log_dir: Path, deadline: float, bin_dir: Optional[Path] = None
    ) -> "PostgresServer":
        bin_dir = bin_dir or postgres_bin_dir()
        if bin_dir is None:
            raise StackError("PostgreSQL's initdb not found: apt-get install postgresql")
        as_root = os.geteuid() == 0
        run_as = "postgres" if as_root else None
        data_root = Path(tempfile.mkdtemp(prefix="rasa-omnidesk-pg-"))
        try:
            if run_as is not None:
                import pwd

                try:
                    account = pwd.getpwnam(run_as)
                except KeyError:
                    raise StackError(
                        "PostgreSQL will not run as root and there is no 'postgres' user "
                        "(the Debian package postgresql makes it)"
                    ) from None
                os.chown(data_root, account.pw_uid, account.pw_gid)
            password = secrets.token_hex(16)
            password_file = data_root / "password"
            password_file.write_text(password + "\n")
            if run_as is not None:
                os.chown(password_file, account.pw_uid, account.pw_gid)
            data = data_root / "data"
            initdb = launch(
                "PostgreSQL's initdb",
                [
                    str(bin_dir / "initdb"),
                    "--pgdata",
                    str(data),
                    "--username",
                    POSTGRES_USER,
                    "--pwfile",
                    str(password_file),
                    "--auth-host",
                    "scram-sha-256",
                    "--auth-local",
                    "peer",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                ],
                log_dir / "postgres-initdb.log",
                base_env(),
                user=run_as,
                # Its own directory: the repository may be closed to the postgres user.
                cwd=data_root,
            )
            try:
                initdb.popen.wait(max(1.0, deadline - time.monotonic()))
            except BaseException:
                initdb.stop()
                raise
            if initdb.popen.returncode != 0:
                raise initdb.failure(f"failed (exit {initdb.popen.returncode})")
            port = free_port()
            process = launch(
                "PostgreSQL",
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={port}",
                    "-c",
                    f"unix_socket_directories={data_root}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                log_dir / "postgres.log",
                base_env(),
                user=run_as,
                cwd=data_root,
                # Fast shutdown: clients are told to go, no waiting for them.
                stop_signal=signal.SIGINT,
            )
        except BaseException:
            shutil.rmtree(data_root, ignore_errors=True)
            raise
        server = cls(process=process, port=port, password=password, data_root=data_root)
        try:
            server._create_database(deadline)
        except BaseException:
            server.stop()
            raise
        return server

    def _create_database(self, deadline: float) -> None:
        import psycopg2

        while True:
            if not self.process.alive:
                raise self.process.failure(
                    f"exited (status {self.process.popen.returncode}) while starting"
                )
            try:
                connection = psycopg2.connect(
                    host="127.0.0.1",
                    port=self.port,
                    dbname="postgres",
                    user=self.user,
                    password=self.password,
                    connect_timeout=2,
                )
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise self.process.failure(
                        f"did not accept connections on 127.0.0.1:{self.port} in time"
                    ) from None
                time.sleep(0.1)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {self.database}")
        finally:
            connection.close()

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            shutil.rmtree(self.data_root, ignore_errors=True)


# -- nginx -------------------------------------------------------------------------------------


def render_nginx_template(values: Mapping[str, str], template: Path = NGINX_TEMPLATE) -> str:
    """The template with its ``${NAME}`` placeholders filled in, as the nginx image's envsubst does.

    Only the placeholders are replaced (nginx's own ``$variables`` stay); a
    missing value or an unknown ``${...}`` left in the file raises ValueError.
    """
    text = template.read_text()
    missing = [name for name in NGINX_PLACEHOLDERS if name not in values]
    if missing:
        raise ValueError(f"no value for {', '.join(missing)}")
    for name in NGINX_PLACEHOLDERS:
        text = text.replace("${" + name + "}", values[name])
    # The comments name the placeholders; nginx ignores them, so check the directives only.
    directives = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    left = re.findall(r"\$\{[^}]*\}", directives)
    if left:
        raise ValueError(f"{template} has placeholders with no value: {sorted(set(left))}")
    return text


def template_placeholders(template: Path = NGINX_TEMPLATE) -> List[str]:
    """The ``${NAME}`` placeholders the template's directives use."""
    directives = "\n".join(line.split("#", 1)[0] for line in template.read_text().splitlines())
    return sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", directives)))


@dataclass
class NginxProxy:
    """nginx in the foreground with the deploy template; pid and temp files in a directory of its own."""

    process: Process
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        """Where its access log goes (the template logs to stdout: the process's log)."""
        return self.process.log

    @classmethod
    def start(
        cls,
        log_dir: Path,
        upstreams: Sequence[str],
        port: int,
        program: Optional[str] = None,
    ) -> "NginxProxy":
        program = program or nginx_program()
        if program is None:
            raise StackError("nginx not found: apt-get install nginx")
        if len(upstreams) != 2:
            raise ValueError("the deploy template has two replicas, RASA_A and RASA_B")
        # In /tmp, not under the repository: nginx's workers drop root for nobody,
        # and must reach their temp directories whatever the repository's modes.
        workdir = Path(tempfile.mkdtemp(prefix="rasa-omnidesk-nginx-"))
        workdir.chmod(0o755)
        try:
            site = workdir / "rasa-omnidesk.conf"
            site.write_text(
                render_nginx_template(
                    {
                        "RASA_A": upstreams[0],
                        "RASA_B": upstreams[1],
                        "PROXY_LISTEN": f"127.0.0.1:{port}",
                    }
                )
            )
            main = workdir / "nginx.conf"
            temp = "\n".join(
                f"    {kind}_temp_path {workdir / kind};"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            main.write_text(
                f"""daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log stderr notice;
events {{
    worker_connections 1024;
}}
http {{
{temp}
    include {site};
}}
"""
            )
            # The generated configuration, beside the logs, for a reader of a failed run.
            shutil.copy(site, log_dir / "nginx-rasa-omnidesk.conf")
            process = launch(
                "nginx",
                [program, "-c", str(main), "-p", str(workdir), "-e", "stderr"],
                log_dir / "nginx.log",
                base_env(),
                # SIGQUIT: graceful (lets requests in flight finish); SIGKILL follows anyway.
                stop_signal=signal.SIGQUIT,
                cwd=workdir,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return cls(process=process, port=port, workdir=workdir)

    def upstreams_used(self, path_prefix: str) -> List[str]:
        """The replica (host:port) that answered each request under ``path_prefix``, in order.

        When nginx tried several (a replica down), the one that answered is the
        last it tried; ``-`` when nginx answered alone (a refused request).
        """
        found = []
        pattern = re.compile(r'"[A-Z]+ (\S+) HTTP/[\d.]+" \d+ \d+ \S+ upstream=(.+)$')
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match and match.group(1).startswith(path_prefix):
                found.append(match.group(2).split(",")[-1].strip())
        return found

    def wait_upstreams(
        self, path_prefix: str, since: int, count: int, timeout: float = 5.0
    ) -> List[str]:
        """``upstreams_used(path_prefix)[since:]`` once it has ``count`` entries.

        nginx writes a request's log line just after its answer: a test that
        just got an answer waits here for the line (bounded).
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.upstreams_used(path_prefix)[since:]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- the cluster -----------------------------------------------------------------------------------


@dataclass
class Replica:
    """One ``rasa run`` of the cluster."""

    name: str
    port: int
    command: List[str] = field(repr=False)
    log: Path
    process: Process = field(repr=False)

    @property
    def url(self) -> str:
        """The replica itself, not through nginx (socket.io customers may connect here)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream(self) -> str:
        """As nginx's access log names it."""
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """The sandbox, Redis, PostgreSQL, the action server, two Rasa replicas and nginx, running."""

    log_dir: Path
    sandbox_url: str
    actions_url: str
    redis: RedisServer
    postgres: PostgresServer
    replicas: List[Replica]
    proxy: NginxProxy
    env: Dict[str, str] = field(repr=False)
    processes: List[Process] = field(repr=False)
    watchdog: Watchdog = field(repr=False)
    _hookpoint_secret: str = field(repr=False)
    # From the call of start() to everything answering, the model already trained.
    startup_seconds: float = 0.0

    @property
    def proxy_url(self) -> str:
        """nginx: what Omnidesk (the sandbox) and callback customers talk to."""
        return self.proxy.url

    @property
    def hookpoint_base(self) -> str:
        """chatServer through nginx, the secret inside: never print or log it."""
        return f"{self.proxy_url}/webhooks/omnidesk/hook/{self._hookpoint_secret}"

    @property
    def switchboard_url(self) -> str:
        return self.redis.url(SWITCHBOARD_DB)

    @property
    def files_dir(self) -> Path:
        """OMNIDESK_FILES_DIR of both replicas (the caller's ``env`` may name another)."""
        return Path(self.env["OMNIDESK_FILES_DIR"])

    @classmethod
    def start(
        cls,
        log_dir: Path,
        callback_url: str,
        env: Optional[Mapping[str, str]] = None,
        credentials_override: Optional[Mapping[str, Any]] = None,
        timeout: float = 240.0,
        model: Optional[Path] = None,
        sandbox_args: Sequence[str] = (),
        cors: Optional[List[str]] = None,
        max_seconds: float = DEFAULT_MAX_SECONDS,
    ) -> "Cluster":
        """Start everything; raise StackError (everything stopped again) if a part fails.

        ``env``: extra variables for the replicas and the action server (e.g.
        faster OMNIDESK_* retries). ``credentials_override``: the whole
        credentials.yml mapping instead of the generated one (socketio with
        session persistence, and callback posting to ``callback_url``).
        ``max_seconds``: the cluster's longest life; a watchdog process stops
        it then, or as soon as this process dies without stopping it.
        """
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        model_path = model or ensure_model()
        began = time.monotonic()
        deadline = began + timeout
        processes: List[Process] = []
        stoppers: List[Any] = []
        watchdog = Watchdog.start(log_dir, max_seconds)
        remove: List[Path] = []

        def started(process: Process, stop: Any) -> None:
            processes.append(process)
            stoppers.append(stop)
            watchdog.watch(processes, remove)

        try:
            sandbox, sandbox_url = start_sandbox(log_dir, deadline, sandbox_args)
            started(sandbox, sandbox.stop)
            redis = RedisServer.start(
                log_dir / "redis.log", min(deadline, time.monotonic() + SERVICE_TIMEOUT)
            )
            started(redis.process, redis.stop)
            postgres = PostgresServer.start(
                log_dir, min(deadline, time.monotonic() + SERVICE_TIMEOUT)
            )
            remove.append(postgres.data_root)
            started(postgres.process, postgres.stop)

            files_dir = log_dir / "files"
            files_dir.mkdir(exist_ok=True)
            proxy_port, actions_port = free_port(), free_port()
            replica_ports = [free_port(), free_port()]
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            actions_url = f"http://127.0.0.1:{actions_port}"
            secret = new_hookpoint_secret()
            cluster_env = omnidesk_env(
                sandbox_url,
                proxy_url,
                secret,
                {
                    **REPLICA_ENV,
                    # The switchboard on this Redis, unless the caller names another
                    # (OMNIDESK_REDIS: a Sentinel group or a Cluster).
                    **(
                        {}
                        if "OMNIDESK_REDIS" in (env or {})
                        else {"OMNIDESK_SWITCHBOARD_URL": redis.url(SWITCHBOARD_DB)}
                    ),
                    # One directory for both replicas, as shared storage would be.
                    "OMNIDESK_FILES_DIR": str(files_dir),
                    **dict(env or {}),
                },
            )
            credentials_file = write_credentials(log_dir, callback_url, credentials_override)
            endpoints_file = log_dir / "endpoints.yml"
            endpoints_file.write_text(
                yaml.safe_dump(
                    {
                        "action_endpoint": {"url": f"{actions_url}/webhook"},
                        "tracker_store": postgres.tracker_store(),
                        "lock_store": {
                            "type": "redis",
                            "url": "127.0.0.1",
                            "port": redis.port,
                            "db": LOCK_STORE_DB,
                        },
                    },
                    sort_keys=False,
                )
            )

            actions = start_action_server(log_dir / "actions.log", actions_port, cluster_env)
            started(actions, actions.stop)
            replicas = []
            for index, port in enumerate(replica_ports):
                name = "rasa-" + "ab"[index]
                command = rasa_run_command(model_path, port, credentials_file, endpoints_file, cors)
                log = log_dir / f"{name}.log"
                process = launch(f"Rasa replica {name} (rasa run)", command, log, cluster_env)
                started(process, process.stop)
                replicas.append(
                    Replica(name=name, port=port, command=command, log=log, process=process)
                )
            proxy = NginxProxy.start(log_dir, [r.upstream for r in replicas], proxy_port)
            remove.append(proxy.workdir)
            started(proxy.process, proxy.stop)

            wait_http(actions, f"{actions_url}/health", deadline)
            for replica in replicas:
                # /status answers 200 once the model is loaded (409 before).
                wait_http(replica.process, f"{replica.url}/status", deadline)
            # Through nginx, as Omnidesk calls it: every replica is behind it by now.
            wait_http(proxy.process, f"{proxy_url}/webhooks/omnidesk/", deadline)
        except BaseException:
            watchdog.stop()
            for stop in reversed(stoppers):
                stop()
            raise
        cluster = cls(
            log_dir=log_dir,
            sandbox_url=sandbox_url,
            actions_url=actions_url,
            redis=redis,
            postgres=postgres,
            replicas=replicas,
            proxy=proxy,
            env=cluster_env,
            processes=processes,
            watchdog=watchdog,
            _hookpoint_secret=secret,
            startup_seconds=time.monotonic() - began,
        )
        atexit.register(cluster.stop)
        return cluster

    # -- faults and checks ------------------------------------------------------------------

    def replica(self, name: str) -> Replica:
        """``rasa-a`` or ``rasa-b``."""
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)

    def kill_replica(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Kill one replica's process group (SIGKILL: no shutdown code runs) and reap it."""
        replica = self.replica(name)
        replica.process.signal_group(signum)
        with contextlib.suppress(Exception):
            replica.process.popen.wait(10)
        replica.process.stop()
        self.watchdog.watch(self.processes, [self.postgres.data_root, self.proxy.workdir])

    def restart_replica(self, name: str, timeout: float = 120.0) -> None:
        """Start a stopped or killed replica again on its port, with the same command."""
        replica = self.replica(name)
        replica.process.stop()
        with contextlib.suppress(OSError):
            # Keep the first run's log beside the new one.
            replica.log.rename(replica.log.with_suffix(f".{int(time.time())}.log"))
        process = launch(f"Rasa replica {name} (rasa run)", replica.command, replica.log, self.env)
        self.processes[self.processes.index(replica.process)] = process
        replica.process = process
        self.watchdog.watch(self.processes, [self.postgres.data_root, self.proxy.workdir])
        wait_http(process, f"{replica.url}/status", time.monotonic() + timeout)

    def restart_replicas(self, env: Mapping[str, Optional[str]], timeout: float = 180.0) -> None:
        """Start every replica again with ``env`` changed (None removes a variable), all at
        once; e.g. to move the switchboard to another Redis. Rasa's lock store stays."""
        for name, value in env.items():
            if value is None:
                self.env.pop(name, None)
            else:
                self.env[name] = value
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            replica.process.stop()
            with contextlib.suppress(OSError):
                replica.log.rename(replica.log.with_suffix(f".{int(time.time())}.log"))
            process = launch(
                f"Rasa replica {replica.name} (rasa run)", replica.command, replica.log, self.env
            )
            self.processes[self.processes.index(replica.process)] = process
            replica.process = process
        self.watchdog.watch(self.processes, [self.postgres.data_root, self.proxy.workdir])
        for replica in self.replicas:
            wait_http(replica.process, f"{replica.url}/status", deadline)
        wait_http(self.proxy.process, f"{self.proxy_url}/webhooks/omnidesk/", deadline)

    def check_alive(self) -> None:
        """Raise StackError naming any process that has died (a killed replica included)."""
        for process in self.processes:
            if not process.alive:
                raise process.failure(f"has exited (status {process.popen.returncode})")

    def stop(self) -> None:
        """nginx, the replicas, the action server, PostgreSQL, Redis, the sandbox; bounded."""
        self.watchdog.stop()
        for process in reversed(self.processes):
            process.stop()
        shutil.rmtree(self.postgres.data_root, ignore_errors=True)
        shutil.rmtree(self.proxy.workdir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()
