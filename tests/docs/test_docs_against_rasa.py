"""The docs' credentials, rules, routes and error messages, against the real code.

Each credentials.yml snippet goes through Rasa's own YAML reading (with its
``${VAR}`` expansion) into ``OmnideskInput.from_credentials``; each rules block
through Rasa's story reader with the example bot's domain; the routes of
docs/channel.md are looked up on a Sanic app with the channel registered as
``rasa run`` registers it; and the messages docs/troubleshooting.md quotes are
produced by the code and compared.
"""

import os
import re
import uuid
from typing import Any, Dict, Iterator, List

import pytest
from rasa.core.channels.channel import register
from rasa.shared.core.domain import Domain
from rasa.shared.core.training_data.story_reader.yaml_story_reader import YAMLStoryReader
from sanic import Sanic

from connectors.omnidesk.channel.input import ChannelConfigError, OmnideskInput
from connectors.omnidesk.channel.rasa_compat import read_yaml
from connectors.omnidesk.client import OmnideskClient, OmnideskUnavailable
from connectors.omnidesk.handoff import new_chat_session_id
from connectors.omnidesk.rules import HOOKPOINT_NAMES
from connectors.omnidesk.settings import OmnideskSettings, SettingsError
from omnidesk_sandbox.testing import running_sandbox
from tests.docs.support import DOCS, ROOT, blocks, normalised, read
from tests.docs.test_docs_text import VALID_ENV

CHANNEL_KEY = "connectors.omnidesk.OmnideskInput"
Sanic.test_mode = True


@pytest.fixture
def omnidesk_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, str]]:
    """The four required settings in the environment, and nothing else of Omnidesk's."""
    for name in [name for name in os.environ if name.startswith("OMNIDESK_")]:
        monkeypatch.delenv(name)
    for name, value in VALID_ENV.items():
        monkeypatch.setenv(name, value)
    yield dict(VALID_ENV)


def _credentials_blocks() -> List[Any]:
    found = [b for b in blocks("yaml") if b.text.lstrip().startswith(("#", CHANNEL_KEY))]
    return [b for b in found if CHANNEL_KEY in b.text]


def test_every_credentials_snippet_in_the_docs_is_accepted(omnidesk_env: Dict[str, str]) -> None:
    snippets = _credentials_blocks()
    assert len(snippets) >= 3, [b.where() for b in snippets]
    for block in snippets:
        credentials = read_yaml(block.text)
        try:
            channel = OmnideskInput.from_credentials(credentials[CHANNEL_KEY])
        except ChannelConfigError as error:
            pytest.fail(f"{block.where()} is refused: {error}")
        assert channel.customer_channels
        if "${OMNIDESK_PUBLIC_URL}" in block.text:
            assert channel.settings.public_url == omnidesk_env["OMNIDESK_PUBLIC_URL"]


def test_a_misspelled_key_in_a_docs_snippet_is_refused_naming_it(
    omnidesk_env: Dict[str, str],
) -> None:
    credentials = read_yaml(_credentials_blocks()[0].text)[CHANNEL_KEY]
    credentials["public_ulr"] = "https://bot.example.com"
    with pytest.raises(ChannelConfigError, match=r"'public_ulr'.*did you mean 'public_url'"):
        OmnideskInput.from_credentials(credentials)


def test_every_rules_snippet_reads_with_rasa_against_the_example_domain() -> None:
    domain = Domain.load(str(ROOT / "domain.yml"))
    # Rasa's snippets have rules or stories at the top; a Prometheus rules file nests them.
    snippets = [b for b in blocks("yaml") if re.search(r"^(rules|stories):", b.text, re.MULTILINE)]
    assert snippets
    for block in snippets:
        steps = YAMLStoryReader(domain).read_from_string(block.text)
        assert steps, block.where()
        actions = {
            event.action_name
            for step in steps
            for event in step.events
            if getattr(event, "action_name", None)
        }
        unknown = {a for a in actions if a not in domain.action_names_or_texts}
        assert not unknown, f"{block.where()} runs actions the domain lacks: {unknown}"


def test_the_routes_docs_channel_md_lists_exist(omnidesk_env: Dict[str, str]) -> None:
    credentials = read_yaml(_credentials_blocks()[0].text)[CHANNEL_KEY]
    channel = OmnideskInput.from_credentials(
        {"customer_channels": {"socketio": {}, "callback": {"url": "http://127.0.0.1:9/bot"}}}
        if "callback" not in credentials["customer_channels"]
        else credentials
    )
    app = Sanic(f"docs_{uuid.uuid4().hex[:12]}")
    register([channel], app, "/webhooks/")
    router: Any = app.router
    router.finalize()
    table = read(DOCS / "channel.md")
    listed = re.findall(r"^\| `(GET|POST) (/[^`]+)`", table, re.MULTILINE)
    assert len(listed) >= 8
    for method, path in listed:
        names = ["messageForCustomer"]
        if "<secret>/" in path:
            names = [path.rsplit("/", 1)[1]]
            assert names[0] in HOOKPOINT_NAMES, f"docs/channel.md: no hookpoint {names[0]}"
        concrete = (
            path.replace("<secret>", "s3cret")
            .replace("<token>", "t0ken")
            .replace("<name>", "a.pdf")
            .rstrip("/")
        )
        route, _, _ = app.router.get(concrete, method, None)
        assert route is not None, f"docs/channel.md: {method} {path} is not a route"
    for path in ("/webhooks/callback/webhook", "/socket.io/"):
        assert path.rstrip("/") in table or path in table
        method = "POST" if "callback" in path else "GET"
        assert app.router.get(path.rstrip("/"), method, None)[0] is not None


def _settings_error(env: Dict[str, str]) -> str:
    with pytest.raises(SettingsError) as raised:
        OmnideskSettings.from_env(env)
    return str(raised.value)


def test_the_messages_troubleshooting_quotes_are_the_code_s(
    omnidesk_env: Dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    page = normalised(read(DOCS / "troubleshooting.md"))
    produced = [
        _settings_error({}),
        _settings_error(
            {**VALID_ENV, "OMNIDESK_HOOKPOINT_SECRET": "my_secret_that_is_long_enough"}
        ),
        _settings_error({**VALID_ENV, "OMNIDESK_PUBLIC_URL": "https://my_bot.example.com"}),
    ]
    for credentials in ({}, {"customer_channels": {"hangouts": None}}):
        with pytest.raises(ChannelConfigError) as raised:
            OmnideskInput.from_credentials(credentials)
        produced.append(str(raised.value))
    for message in produced:
        assert normalised(message) in page, f"docs/troubleshooting.md lacks:\n{message}"

    typo = _settings_error_from_credentials({"public_ulr": "x"})
    assert normalised(typo.split(" The settings are:")[0]) in page

    from connectors.omnidesk.action.escalate_to_human import (
        ActionServerSettingsError,
        check_settings_at_start,
    )

    monkeypatch.delenv("OMNIDESK_PUBLIC_URL")
    monkeypatch.delenv("OMNIDESK_HOOKPOINT_SECRET")
    with pytest.raises(ActionServerSettingsError) as stopped:
        check_settings_at_start()
    first, public_url, last = str(stopped.value).splitlines()
    assert normalised(first) in page and normalised(public_url) in page
    assert normalised("Set the" + last.split(". Set the", 1)[1]) in page


def _settings_error_from_credentials(credentials: Dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as raised:
        OmnideskSettings.from_credentials(credentials, VALID_ENV)
    return str(raised.value)


async def test_the_client_failure_troubleshooting_shows_is_the_client_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = normalised(read(DOCS / "troubleshooting.md"))
    async with running_sandbox(
        chat_account_token="sandboxAccountToken1", chat_server_token="sandboxServerToken1"
    ) as sandbox:
        sandbox.inject_fault("notifyUserNewChatMessage", status=503)
        env = {
            **VALID_ENV,
            "OMNIDESK_API_URL": sandbox.url,
            "OMNIDESK_CHAT_ACCOUNT_TOKEN": "sandboxAccountToken1",
            "OMNIDESK_CHAT_SERVER_TOKEN": "sandboxServerToken1",
            "OMNIDESK_BACKOFF_BASE": "0.01",
            "OMNIDESK_BACKOFF_MAX": "0.02",
        }
        settings = OmnideskSettings.from_env(env)
        async with OmnideskClient(settings) as client:
            with pytest.raises(OmnideskUnavailable) as raised:
                await client.notify_user_new_chat_message(
                    chat_session_id=new_chat_session_id(), message="hello", message_number=1
                )
    # Omnidesk's own message, when it sends one, follows in the docs' "..." place.
    said = raised.value.omnidesk_message
    assert said and str(raised.value).replace(f" ({said})", "") in page
    retried = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retried
    assert normalised(retried[0].replace(f": {said}", "").split("retrying in")[0]) in page
