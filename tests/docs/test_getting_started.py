"""docs/getting-started.md, followed as written, from Rasa's own initial project.

The page marks each code block with the step it is (``<!-- step: ... -->``); this
test reads those blocks from the page, never from a copy of its own, and applies
them to the project ``rasa init`` copies (the installed Rasa's
``rasa/cli/initial_project``): it writes and appends the files, runs the
commands (``rasa data validate --fail-on-warnings``, ``rasa train``), starts the
sandbox, the action server, Rasa and the page's callback receiver with the
page's commands and settings, and walks the page's journey: the moodbot answers,
the customer asks for a person, a turn reaches the agent, the agent's reply
reaches the customer, the agent ends the chat, the moodbot answers again.

What the test changes, and only that: the page's ports (which the page calls
yours to choose) become free ones, ``/path/to/rasa-omnidesk`` becomes this
checkout, ``rasa init --no-prompt`` becomes a copy of the initial project (the
command trains a model the next steps replace anyway), and the install step is
left to tests/docs/test_install_from_wheel.py: the package is on PYTHONPATH.
"""

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import aiohttp
import pytest

from tests.docs.support import DOCS, ROOT
from tests.e2e.people import Desk, apoll
from tests.e2e.stack import BIN, Process, base_env, free_port, launch, log_tail, wait_http

PAGE = DOCS / "getting-started.md"
# Where the page says the port is yours to choose.
PAGE_PORTS = {"rasa": 5005, "actions": 5055, "sandbox": 5081, "receiver": 5034}
CHECKOUT = "/path/to/rasa-omnidesk"
RUN_TIMEOUT = 1200.0
START_TIMEOUT = 180.0

_STEP = re.compile(
    r"<!-- step: (?P<step>[^\n]*?) -->\n```(?P<lang>[\w-]*)\n(?P<text>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
_FENCE = re.compile(r"^```[\w-]*\n.*?^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Step:
    kind: str
    argument: str
    text: str


def page_steps() -> List[Step]:
    page = PAGE.read_text(encoding="utf-8")
    steps = []
    for match in _STEP.finditer(page):
        kind, _, argument = match.group("step").partition(" ")
        steps.append(Step(kind, argument.strip(), match.group("text")))
    return steps


def test_every_code_block_of_the_page_says_what_step_it_is() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert len(_FENCE.findall(page)) == len(page_steps()), (
        "every code block in getting-started.md needs a <!-- step: ... --> comment "
        "right above it, so the page's test applies it or knows why not"
    )
    known = {"init", "install", "none", "write", "append", "run", "env", "start", "say"}
    assert {step.kind for step in page_steps()} <= known


def initial_project() -> Path:
    import rasa

    found = Path(rasa.__file__).parent / "cli" / "initial_project"
    if not found.is_dir():
        pytest.skip(f"this Rasa has no moodbot to start from ({found} is missing)")
    return found


@pytest.fixture(scope="module")
def ports() -> Dict[int, int]:
    return {page_port: free_port() for page_port in PAGE_PORTS.values()}


def as_here(text: str, ports: Dict[int, int]) -> str:
    """The page's text with its ports and checkout path made this test's."""
    for page_port, port in ports.items():
        text = re.sub(rf"\b{page_port}\b", str(port), text)
    return text.replace(CHECKOUT, str(ROOT))


def run_commands(text: str, project: Path, env: Dict[str, str], log: Path) -> None:
    for command in (line for line in text.splitlines() if line.strip()):
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
        )
        output = done.stdout.decode(errors="replace")
        with log.open("a", encoding="utf-8") as out:
            out.write(f"$ {command}\n{output}\n")
        tail = "\n".join(output.splitlines()[-30:])
        assert done.returncode == 0, f"the page's `{command}` failed ({done.returncode}):\n{tail}"


@dataclass
class Followed:
    """The project after the page's steps, with its processes running."""

    project: Path
    processes: Dict[str, Process]
    say_command: str
    sandbox_url: str

    def received(self, sender: str) -> List[Dict[str, Any]]:
        lines = self.processes["receiver"].log.read_text(errors="replace").splitlines()
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("recipient_id") == sender:
                messages.append(message)
        return messages

    def say(self, sender: str, text: str) -> None:
        """The page's curl command, with this sender and text in its JSON body."""
        words = shlex.split(self.say_command)
        body = words.index("-d") + 1
        payload = json.loads(words[body])
        payload.update(sender=sender, message=text)
        words[body] = json.dumps(payload)
        done = subprocess.run(words, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert done.stdout.decode() == "success", done.stdout


def start(name: str, command: str, project: Path, env: Dict[str, str], log_dir: Path) -> Process:
    return launch(
        f"{name} (`{command}`)", ["bash", "-c", command], log_dir / f"{name}.log", env, cwd=project
    )


def wait_port(process: Process, port: int, deadline: float) -> None:
    import socket

    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not process.alive:
            raise process.failure(f"exited ({process.popen.returncode}) while starting")
        if time.monotonic() > deadline:
            raise process.failure(f"did not listen on {port} in time")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def followed(tmp_path_factory: pytest.TempPathFactory, ports: Dict[int, int]) -> Iterator[Followed]:
    project = tmp_path_factory.mktemp("moodbot")
    log_dir = ROOT / "artifacts" / "getting-started"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    commands_log = log_dir / "commands.log"
    env = base_env()
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    processes: Dict[str, Process] = {}
    say_command = ""
    try:
        for step in page_steps():
            text = as_here(step.text, ports)
            if step.kind == "init":
                assert text.strip() == "rasa init --no-prompt", text
                shutil.copytree(
                    initial_project(),
                    project,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"),
                )
            elif step.kind in ("install", "none"):
                continue
            elif step.kind == "write":
                (project / step.argument).parent.mkdir(parents=True, exist_ok=True)
                (project / step.argument).write_text(text, encoding="utf-8")
            elif step.kind == "append":
                target = project / step.argument
                before = target.read_text(encoding="utf-8") if target.exists() else ""
                if before and not before.endswith("\n"):
                    before += "\n"
                target.write_text(before + text, encoding="utf-8")
            elif step.kind == "run":
                run_commands(text, project, env, commands_log)
            elif step.kind == "env":
                for line in text.splitlines():
                    name, _, value = line.split("export ", 1)[-1].partition("=")
                    env[name.strip()] = value.strip()
            elif step.kind == "start":
                processes[step.argument] = start(step.argument, text.strip(), project, env, log_dir)
                deadline = time.monotonic() + START_TIMEOUT
                port = ports[PAGE_PORTS[step.argument]]
                if step.argument == "rasa":
                    wait_http(
                        processes["rasa"], f"http://127.0.0.1:{port}/webhooks/omnidesk/", deadline
                    )
                elif step.argument == "actions":
                    wait_http(processes["actions"], f"http://127.0.0.1:{port}/health", deadline)
                else:
                    wait_port(processes[step.argument], port, deadline)
            elif step.kind == "say":
                say_command = text.strip()
        assert set(processes) == set(PAGE_PORTS), f"the page starts {sorted(processes)}"
        assert say_command, "the page shows no way for the customer to write"
        yield Followed(
            project,
            processes,
            say_command,
            f"http://127.0.0.1:{ports[PAGE_PORTS['sandbox']]}",
        )
    finally:
        for process in reversed(list(processes.values())):
            process.stop()


async def say(followed: Followed, sender: str, text: str) -> None:
    await asyncio.get_running_loop().run_in_executor(None, followed.say, sender, text)


# The journey runs the rasa command line and real processes (skipped on Rasa Pro
# without a license); the page's shape is checked on every Rasa line.
@pytest.mark.e2e
@pytest.mark.rasa_cli
@pytest.mark.timeout(1500)
async def test_the_page_reaches_a_live_agent_and_back(followed: Followed) -> None:
    customer = f"jane-{os.getpid()}"

    def texts() -> List[str]:
        return [m["text"] for m in followed.received(customer) if m.get("text")]

    async def says(fragment: str, after: int = 0) -> str:
        async def seen() -> Any:
            return next((t for t in texts()[after:] if fragment in t), None)

        try:
            return str(await apoll(seen, f"the customer hearing {fragment!r}", timeout=60))
        except AssertionError as error:
            raise AssertionError(
                f"{error}\nrasa:\n{log_tail(followed.processes['rasa'].log)}\n"
                f"actions:\n{log_tail(followed.processes['actions'].log)}"
            ) from None

    async with aiohttp.ClientSession() as http:
        desk = Desk(followed.sandbox_url, http)

        # The moodbot answers.
        await say(followed, customer, "hello")
        await says("Hey! How are you?")

        # Asked for a person, it hands over.
        await say(followed, customer, "I want to talk to a person")
        await says("One moment, I'm looking for a colleague")
        await says("You're connected with our support team")
        assert not any("omnidesk_handoff" in json.dumps(m) for m in followed.received(customer))
        [chat] = await desk.chats()
        chat_id = chat["chat_session_id"]

        # A turn each way.
        await say(followed, customer, "My parcel has not arrived")

        async def at_the_desk() -> Any:
            return any(
                m["text"] == "My parcel has not arrived"
                for m in (await desk.chat(chat_id))["messages"]
            )

        await apoll(at_the_desk, "the customer's turn at the agent's desk")
        answer = await desk.reply(chat_id, "Hello, I'm Anna. Let me check.", name="Anna")
        assert answer["hookpoint_status"] == 200, answer
        await says("Hello, I'm Anna. Let me check.")
        [from_agent] = [
            m
            for m in followed.received(customer)
            if m.get("text", "").startswith("Hello, I'm Anna")
        ]
        assert (from_agent.get("agent") or {}).get("name") == "Anna", from_agent

        # The agent ends the chat; the moodbot is back.
        await desk.end(chat_id)
        await says("Our colleague has closed the chat. I'm back")
        heard = len(texts())
        await say(followed, customer, "hello")
        await says("Hey! How are you?", after=heard)
        relayed = [m["text"] for m in (await desk.chat(chat_id))["messages"]]
        assert relayed.count("hello") == 0, relayed
