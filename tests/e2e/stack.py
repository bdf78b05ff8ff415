"""The whole product on free loopback ports, as ``make run`` runs it, for tests and benchmarks.

``Stack.start(...)`` launches three real processes, each in its own process
group, each logging to its own file under ``log_dir``:

- the Omnidesk sandbox (``python -m omnidesk_sandbox --port 0``; its ready line
  gives the port),
- the action server (``rasa run actions``),
- Rasa with the trained example bot and the Omnidesk channel wrapping socketio
  (``session_persistence: true``), callback (posting to ``callback_url``) and rest,
  with ``--enable-api`` so trackers can be read.

Each is waited for by polling it (bounded); a process that dies or does not
answer in time raises ``StackError`` naming it, with the tail of its log.
``stop()`` (or leaving ``with stack:``) stops every process group, SIGTERM then
SIGKILL, bounded. The hookpoint secret is generated per stack and never printed.

``ensure_model()`` trains models/example-bot.tar.gz when it is missing or older
than the domain, config or data; tests/bot's fixture uses it too.
"""

import atexit
import contextlib
import fcntl
import json
import os
import random
import secrets
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from connectors.omnidesk.settings import HOOKPOINT_TOKEN_CONTEXT, derive_chat_token

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RASA = BIN / "rasa"
MODEL_NAME = "example-bot"
MODEL_PATH = ROOT / "models" / f"{MODEL_NAME}.tar.gz"
TRAIN_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
SANDBOX_READY = "OMNIDESK_SANDBOX_READY "
SANDBOX_ACCOUNT_TOKEN = "sandboxAccountToken1"
SANDBOX_SERVER_TOKEN = "sandboxServerToken1"

QUIET_ENV = {
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "RASA_TELEMETRY_ENABLED": "false",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


class StackError(RuntimeError):
    """A process of the stack could not be started; the message names it and shows its log."""


# -- the model ----------------------------------------------------------------------


def training_files() -> Iterable[Path]:
    yield ROOT / "domain.yml"
    yield ROOT / "config.yml"
    yield from sorted((ROOT / "data").rglob("*.yml"))


def model_is_current(model: Path = MODEL_PATH) -> bool:
    if not model.exists():
        return False
    built = model.stat().st_mtime
    return all(path.stat().st_mtime <= built for path in training_files())


def ensure_model() -> Path:
    """models/example-bot.tar.gz, trained from the current domain, config and data.

    Trains only when the model is missing or older than a training file. A file
    lock keeps two test or benchmark processes from training at once, and the
    model is trained into a temporary directory and moved into place, so a
    running Rasa never reads half a file.
    """
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    lock_path = MODEL_PATH.parent / f".{MODEL_NAME}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if model_is_current():
            return MODEL_PATH
        with tempfile.TemporaryDirectory(dir=MODEL_PATH.parent, prefix=".train-") as out:
            trained = subprocess.run(
                [
                    str(RASA),
                    "train",
                    "--quiet",
                    "--fixed-model-name",
                    MODEL_NAME,
                    "--out",
                    out,
                ],
                cwd=ROOT,
                env={**os.environ, **QUIET_ENV},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TRAIN_TIMEOUT,
                check=False,
            )
            produced = Path(out) / f"{MODEL_NAME}.tar.gz"
            if trained.returncode != 0 or not produced.exists():
                raise StackError(
                    f"rasa train failed (exit {trained.returncode}); fix the example bot's "
                    f"domain.yml, config.yml or data/:\n{trained.stdout[-3000:]}\n"
                    f"{trained.stderr[-3000:]}"
                )
            os.replace(produced, MODEL_PATH)
    return MODEL_PATH


# -- processes ------------------------------------------------------------------------


def _ephemeral_range() -> Tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and stays free while a server starts.

    Servers that cannot bind port 0 and say which port they got (rasa, redis, nginx) need a
    port picked for them. Port 0 would give one from the kernel's ephemeral range, where
    every outgoing connection (to Redis, PostgreSQL, the sandbox) also takes its source
    port: seconds later, while Rasa loads its model, one of them can hold it and the bind
    fails. So the pick comes from below that range, never twice in one test run, and is
    checked by binding it.
    """
    low, _ = _ephemeral_range()
    top = max(low - 1, 12000)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randrange(10000, top)
        if port in _handed_out or not port_is_free(port):
            continue
        _handed_out.add(port)
        return port
    raise StackError("no free TCP port on 127.0.0.1 below the ephemeral range after 500 tries")


def redis_command(program: str, port: int) -> List[str]:
    """redis-server on 127.0.0.1 only, kept in memory (no RDB snapshot, no AOF)."""
    return [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Process:
    """One process of the stack, in its own process group."""

    name: str
    popen: "subprocess.Popen[bytes]"
    log: Path
    stopped: bool = False
    # What asks the process to stop; SIGKILL follows after the timeout either way.
    stop_signal: int = signal.SIGTERM

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def failure(self, problem: str) -> StackError:
        return StackError(
            f"{self.name} {problem}; its log is {self.log}. The last lines:\n{log_tail(self.log)}"
        )

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """``stop_signal`` to the whole group, then SIGKILL after ``timeout``; always reaps."""
        if self.stopped:
            return  # the group id may belong to someone else by now
        self.stopped = True
        if self.alive:
            self.signal_group(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Children may outlive the leader: the group goes either way.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)


def launch(
    name: str,
    command: List[str],
    log: Path,
    env: Mapping[str, str],
    *,
    user: Optional[str] = None,
    stop_signal: int = signal.SIGTERM,
    cwd: Optional[Path] = None,
) -> Process:
    """Start ``command`` in its own process group, stdout and stderr into ``log``.

    ``user``: run it as that user (and its group), for programs that refuse to
    run as root (PostgreSQL); only root may ask for it. ``cwd``: the working
    directory, the repository's root unless said.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    as_user: Dict[str, Any] = {}
    if user is not None:
        as_user = {"user": user, "group": user, "extra_groups": []}
    log.write_bytes(b"")
    # Append mode: a program that opens its own log again (nginx's access log
    # on /dev/stdout) then writes at the end too, instead of over the rest.
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            command,
            cwd=cwd or ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user,
        )
    return Process(name=name, popen=popen, log=log, stop_signal=stop_signal)


def http_status(url: str, timeout: float = 2.0) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def wait_http(process: Process, url: str, deadline: float, ok: Iterable[int] = (200,)) -> None:
    wanted = set(ok)
    while True:
        if not process.alive:
            raise process.failure(f"exited (status {process.popen.returncode}) while starting")
        if http_status(url) in wanted:
            return
        if time.monotonic() > deadline:
            raise process.failure(f"did not answer at {url} in time")
        time.sleep(0.25)


def wait_ready_line(process: Process, prefix: str, deadline: float) -> Dict[str, Any]:
    while True:
        with contextlib.suppress(OSError):
            for line in process.log.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    found: Dict[str, Any] = json.loads(line[len(prefix) :])
                    return found
        if not process.alive:
            raise process.failure(f"exited (status {process.popen.returncode}) while starting")
        if time.monotonic() > deadline:
            raise process.failure(f"printed no {prefix.strip()} line in time")
        time.sleep(0.1)


def base_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of a stack process: this one's, without a developer's OMNIDESK_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIDESK_")}
    env.update(QUIET_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def new_hookpoint_secret() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(40))


# -- the parts every stack has (tests/cluster starts them too) --------------------------


def start_sandbox(
    log_dir: Path, deadline: float, sandbox_args: Sequence[str] = ()
) -> Tuple[Process, str]:
    """The Omnidesk sandbox on a port of its choosing; returns it and its URL."""
    sandbox = launch(
        "the Omnidesk sandbox",
        [
            sys.executable,
            "-m",
            "omnidesk_sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *sandbox_args,
        ],
        log_dir / "sandbox.log",
        base_env(),
    )
    try:
        ready = wait_ready_line(sandbox, SANDBOX_READY, min(deadline, time.monotonic() + 30))
    except BaseException:
        sandbox.stop()
        raise
    return sandbox, str(ready["url"])


def omnidesk_env(
    sandbox_url: str,
    public_url: str,
    secret: str,
    extra: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """The environment of Rasa and the action server: the sandbox as Omnidesk.

    ``public_url`` is where the sandbox calls the hookpoints back (Rasa, or the
    proxy in front of it).
    """
    return base_env(
        {
            "OMNIDESK_API_URL": sandbox_url,
            "OMNIDESK_CHAT_CONFIG_URL": sandbox_url,
            "OMNIDESK_CHAT_ACCOUNT_TOKEN": SANDBOX_ACCOUNT_TOKEN,
            "OMNIDESK_CHAT_SERVER_TOKEN": SANDBOX_SERVER_TOKEN,
            "OMNIDESK_PUBLIC_URL": public_url,
            "OMNIDESK_HOOKPOINT_SECRET": secret,
            **dict(extra or {}),
        }
    )


def write_credentials(
    log_dir: Path,
    callback_url: str,
    credentials_override: Optional[Mapping[str, Any]] = None,
) -> Path:
    """log_dir/credentials.yml: the generated one, or ``credentials_override``."""
    credentials = (
        dict(credentials_override)
        if credentials_override is not None
        else generated_credentials(callback_url)
    )
    credentials_file = log_dir / "credentials.yml"
    credentials_file.write_text(yaml.safe_dump(credentials, sort_keys=False))
    return credentials_file


def start_action_server(log: Path, port: int, env: Mapping[str, str]) -> Process:
    """``rasa run actions`` with the example bot's actions on 127.0.0.1:``port``."""
    return launch(
        "the action server (rasa run actions)",
        [str(RASA), "run", "actions", "--port", str(port), "--actions", "actions"],
        log,
        # rasa_sdk binds 0.0.0.0 unless SANIC_HOST says otherwise.
        {**env, "SANIC_HOST": "127.0.0.1"},
    )


def rasa_run_command(
    model_path: Path,
    port: int,
    credentials_file: Path,
    endpoints_file: Path,
    cors: Optional[List[str]] = None,
) -> List[str]:
    """``rasa run`` on 127.0.0.1:``port`` with the API on (trackers are read through it)."""
    command = [
        str(RASA),
        "run",
        "--model",
        str(model_path),
        "--interface",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-api",
        "--credentials",
        str(credentials_file),
        "--endpoints",
        str(endpoints_file),
    ]
    if cors:
        command += ["--cors", *cors]
    return command


# -- the stack --------------------------------------------------------------------------


@dataclass
class Stack:
    """The sandbox, the action server and Rasa with the connector, running."""

    log_dir: Path
    rasa_url: str
    actions_url: str
    sandbox_url: str
    env: Dict[str, str] = field(repr=False)
    processes: List[Process] = field(repr=False)
    _hookpoint_secret: str = field(repr=False)

    @property
    def hookpoint_secret(self) -> str:
        """The hookpoint secret: never print or log it."""
        return self._hookpoint_secret

    def hookpoint_base(self, chat_session_id: str) -> str:
        """The chat's own chatServer (its token inside): never print or log it."""
        token = derive_chat_token(self._hookpoint_secret, HOOKPOINT_TOKEN_CONTEXT, chat_session_id)
        return f"{self.rasa_url}/webhooks/omnidesk/hook/{token}"

    @property
    def rasa_port(self) -> int:
        return int(self.rasa_url.rsplit(":", 1)[1])

    @property
    def actions_port(self) -> int:
        return int(self.actions_url.rsplit(":", 1)[1])

    @property
    def sandbox_port(self) -> int:
        return int(self.sandbox_url.rsplit(":", 1)[1])

    @classmethod
    def start(
        cls,
        log_dir: Path,
        callback_url: str,
        env: Optional[Mapping[str, str]] = None,
        credentials_override: Optional[Mapping[str, Any]] = None,
        timeout: float = 180.0,
        cors: Optional[List[str]] = None,
        model: Optional[Path] = None,
        sandbox_args: Sequence[str] = (),
        rasa_launcher: Sequence[str] = (),
    ) -> "Stack":
        """Start everything; raise StackError (everything stopped again) if a part fails.

        ``env``: extra variables for both Rasa processes (e.g. faster OMNIDESK_*
        retries). ``credentials_override``: the whole credentials.yml mapping,
        instead of the generated one. ``cors``: origins for ``rasa run --cors``.
        ``sandbox_args``: more options for the sandbox (e.g. ``--max-chats 2000``).
        ``rasa_launcher``: what runs Rasa's command line instead of the ``rasa``
        script, e.g. ``python -m tests.channel_apis.on_fakes rasa`` (channel
        clients pointed at local fakes).
        """
        deadline = time.monotonic() + timeout
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        model_path = model or ensure_model()
        processes: List[Process] = []
        try:
            sandbox, sandbox_url = start_sandbox(log_dir, deadline, sandbox_args)
            processes.append(sandbox)

            rasa_port, actions_port = free_port(), free_port()
            rasa_url = f"http://127.0.0.1:{rasa_port}"
            actions_url = f"http://127.0.0.1:{actions_port}"
            secret = new_hookpoint_secret()
            stack_env = omnidesk_env(sandbox_url, rasa_url, secret, env)
            credentials_file = write_credentials(log_dir, callback_url, credentials_override)
            endpoints_file = log_dir / "endpoints.yml"
            endpoints_file.write_text(
                yaml.safe_dump({"action_endpoint": {"url": f"{actions_url}/webhook"}})
            )

            actions = start_action_server(log_dir / "actions.log", actions_port, stack_env)
            processes.append(actions)
            rasa_command = rasa_run_command(
                model_path, rasa_port, credentials_file, endpoints_file, cors
            )
            if rasa_launcher:
                rasa_command = [*rasa_launcher, *rasa_command[1:]]
            rasa = launch("Rasa (rasa run)", rasa_command, log_dir / "rasa.log", stack_env)
            processes.append(rasa)

            wait_http(actions, f"{actions_url}/health", deadline)
            # /status answers 200 once the model is loaded (409 before).
            wait_http(rasa, f"{rasa_url}/status", deadline)
        except BaseException:
            for process in reversed(processes):
                process.stop()
            raise
        stack = cls(
            log_dir=log_dir,
            rasa_url=rasa_url,
            actions_url=actions_url,
            sandbox_url=sandbox_url,
            env=stack_env,
            processes=processes,
            _hookpoint_secret=secret,
        )
        # A test run that ends without its fixture's teardown still leaves nothing behind.
        atexit.register(stack.stop)
        return stack

    def check_alive(self) -> None:
        """Raise StackError naming any process that has died since the start."""
        for process in self.processes:
            if not process.alive:
                raise process.failure(f"has exited (status {process.popen.returncode})")

    def stop(self) -> None:
        """Stop every process group (Rasa first, the sandbox last), bounded."""
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


def generated_credentials(callback_url: str) -> Dict[str, Any]:
    """credentials.yml for the stack: the Omnidesk channel wrapping socketio, callback and rest."""
    return {
        "connectors.omnidesk.OmnideskInput": {
            "customer_channels": {
                "socketio": {
                    "user_message_evt": "user_uttered",
                    "bot_message_evt": "bot_uttered",
                    "session_persistence": True,
                },
                "callback": {"url": callback_url},
                "rest": None,
            }
        }
    }
