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
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

import aiohttp
import pytest

from tests.docs.support import DOCS, ROOT
from tests.e2e.people import Desk, apoll
from tests.e2e.stack import Process, base_env, free_port, launch, log_tail, wait_http

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
    known = {
        "init",
        "install",
        "none",
        "write",
        "append",
        "run",
        "env",
        "start",
        "say",
        "agent",
        "poll",
        "try",
    }
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


def run_commands(text: str, project: Path, env: Dict[str, str], log: Path) -> str:
    """Run each line in ``project``; all they printed."""
    printed = []
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
        printed.append(output)
    return "".join(printed)


# The bot's own channels, in a regular package: rasa_omnidesk must not be hidden by it.
OWN_CONNECTORS = {
    "connectors/__init__.py": '"""The moodbot\'s own channels."""\n',
    "connectors/moodbot_channel.py": (
        "from rasa.core.channels.rest import RestInput\n\n\n"
        "class MoodInput(RestInput):\n"
        "    @classmethod\n"
        "    def name(cls):\n"
        '        return "mood"\n'
    ),
}


def bot_environment(where: Path) -> Path:
    """A fresh venv that sees this environment's packages (the bot's Rasa) and nothing else.

    Its ``rasa`` is ``python -m rasa``: the console script of this environment
    would run this environment's Python, which has this checkout installed.
    """
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    (Path(site) / "bot_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    rasa = where / "bin" / "rasa"
    rasa.write_text(f'#!/bin/sh\nexec "{python}" -m rasa "$@"\n')
    rasa.chmod(0o755)
    return where / "bin"


@dataclass
class Followed:
    """The project after the page's steps, with its processes running."""

    project: Path
    processes: Dict[str, Process]
    commands: Dict[str, str]  # the page's say, poll and agent commands, as templates
    sandbox_url: str
    env: Dict[str, str]
    tried: Dict[str, str] = field(default_factory=dict)  # a try step's command: its output

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

    def run(self, kind: str, sender: str = "", **values: str) -> str:
        """One of the page's commands, its placeholders (and sender) filled in; what it printed."""
        command = self.commands[kind]
        if sender:
            assert "sender=jane&" in command, command
            command = command.replace("sender=jane&", f"sender={sender}&")
        for name, value in values.items():
            command = command.replace(f"<{name}>", value)
        done = subprocess.run(
            shlex.split(command), capture_output=True, timeout=120, check=False, env=self.env
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout.decode()

    def say(self, sender: str, text: str) -> List[Dict[str, Any]]:
        """The page's curl to rest, with this sender and text in its JSON body: the answer."""
        words = shlex.split(self.commands["say"])
        body = words.index("-d") + 1
        payload = json.loads(words[body])
        payload.update(sender=sender, message=text)
        words[body] = json.dumps(payload)
        done = subprocess.run(words, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        answer: List[Dict[str, Any]] = json.loads(done.stdout)
        return answer


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
    # A user's shell: nothing of this checkout on the path; the bot's environment first.
    env = {k: v for k, v in base_env().items() if k != "PYTHONPATH"}
    bot_bin = bot_environment(tmp_path_factory.mktemp("bot-env") / "venv")
    env["PATH"] = os.pathsep.join([str(bot_bin), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(bot_bin.parent)
    processes: Dict[str, Process] = {}
    commands: Dict[str, str] = {}
    tried: Dict[str, str] = {}
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
                for name, content in OWN_CONNECTORS.items():
                    (project / name).parent.mkdir(parents=True, exist_ok=True)
                    (project / name).write_text(content, encoding="utf-8")
            elif step.kind == "none":
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
            elif step.kind in ("run", "install"):
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
            elif step.kind == "try":
                output = run_commands(text, project, env, commands_log)
                assert step.argument in output, f"the page's `{text.strip()}` printed {output!r}"
                tried[text.strip()] = output
            else:
                commands[" ".join([step.kind, step.argument]).strip()] = text.strip()
        assert set(processes) == set(PAGE_PORTS), f"the page starts {sorted(processes)}"
        assert {"say", "poll", "agent chats", "agent reply"} <= set(commands), commands
        yield Followed(
            project,
            processes,
            commands,
            f"http://127.0.0.1:{ports[PAGE_PORTS['sandbox']]}",
            env,
            tried,
        )
    finally:
        for process in reversed(list(processes.values())):
            process.stop()


async def say(followed: Followed, sender: str, text: str) -> List[Dict[str, Any]]:
    return await asyncio.get_running_loop().run_in_executor(None, followed.say, sender, text)


async def page_command(followed: Followed, kind: str, **values: str) -> Any:
    printed = await asyncio.get_running_loop().run_in_executor(
        None, lambda: followed.run(kind, **values)
    )
    return json.loads(printed)


def texts(messages: List[Dict[str, Any]]) -> List[str]:
    return [str(m["text"]) for m in messages if m.get("text")]


# The journey runs the rasa command line and real processes (skipped on Rasa Pro
# without a license); the page's shape is checked on every Rasa line.
@pytest.mark.e2e
@pytest.mark.rasa_cli
@pytest.mark.timeout(1500)
async def test_the_page_reaches_a_live_agent_on_rest_and_back(followed: Followed) -> None:
    customer = f"jane-{os.getpid()}"

    def logs() -> str:
        return (
            f"rasa:\n{log_tail(followed.processes['rasa'].log)}\n"
            f"actions:\n{log_tail(followed.processes['actions'].log)}"
        )

    async def poll_until(after: str, done: Any) -> List[Dict[str, Any]]:
        """The page's poll, with the cursor, until ``done(messages so far)``."""
        seen: List[Dict[str, Any]] = []
        for _ in range(10):
            messages = await page_command(
                followed, "poll", sender=customer, id=after, customer_token=token
            )
            assert isinstance(messages, list), messages
            seen += messages
            if messages:
                after = str(messages[-1]["id"])
            if done(seen):
                return seen
        raise AssertionError(f"the poll never brought it; got {seen!r}\n{logs()}")

    # The moodbot answers on rest, as before.
    assert texts(await say(followed, customer, "hello")) == ["Hey! How are you?"], logs()

    # Asked for a person, it hands over; the answer carries the handoff's details.
    answer = await say(followed, customer, "I want to talk to a person")
    spoken = " ".join(texts(answer))
    assert "One moment, I'm looking for a colleague" in spoken, (answer, logs())
    assert "You're connected with our support team" in spoken, (answer, logs())
    assert not any("omnidesk_handoff" in json.dumps(m) for m in answer)
    [details] = [m for m in answer if "omnidesk_customer" in (m.get("custom") or {})]
    token = details["custom"]["omnidesk_customer"]["customer_token"]
    [chat] = (await page_command(followed, "agent chats"))["chats"]
    chat_id = chat["chat_session_id"]

    async with aiohttp.ClientSession() as http:
        desk = Desk(followed.sandbox_url, http)

        # A turn each way: the customer's to the desk, the agent's to the long poll.
        assert texts(await say(followed, customer, "My parcel has not arrived")) == []

        async def at_the_desk() -> Any:
            return any(
                m["text"] == "My parcel has not arrived"
                for m in (await desk.chat(chat_id))["messages"]
            )

        await apoll(at_the_desk, "the customer's turn at the agent's desk")
        replied = await page_command(followed, "agent reply", chat_session_id=chat_id)
        assert replied["hookpoint_status"] == 200, replied
        heard = await poll_until(str(details["id"]), lambda seen: texts(seen))
        assert texts(heard) == ["Hello, I am Anna. Let me check."]
        assert heard[0]["agent"]["name"] == "Anna"

        # The agent ends the chat: the moodbot's words and the end; then it answers again.
        await desk.end(chat_id)
        tail = await poll_until(
            str(heard[-1]["id"]),
            lambda seen: any("omnidesk_ended" in (m.get("custom") or {}) for m in seen),
        )
        assert any("Our colleague has closed the chat. I'm back" in t for t in texts(tail))
        assert texts(await say(followed, customer, "hello")) == ["Hey! How are you?"]
        relayed = [m["text"] for m in (await desk.chat(chat_id))["messages"]]
        assert relayed.count("hello") == 0, relayed

    # The callback try reached the app backend, which printed the moodbot's answer.
    received = [m.get("text") for m in followed.received("jane-app")]
    assert "Hey! How are you?" in received, received
