"""A fresh fake per test, started before it and stopped after."""

from typing import Iterator

import pytest

from tests.channel_apis.botframework import BotFrameworkApi
from tests.channel_apis.graph import GraphApi
from tests.channel_apis.slack import SlackApi
from tests.channel_apis.telegram import TelegramApi
from tests.channel_apis.twilio import TwilioApi


@pytest.fixture
def telegram_api() -> Iterator[TelegramApi]:
    api = TelegramApi().start()
    yield api
    api.stop()


@pytest.fixture
def graph_api() -> Iterator[GraphApi]:
    api = GraphApi().start()
    yield api
    api.stop()


@pytest.fixture
def slack_api() -> Iterator[SlackApi]:
    api = SlackApi().start()
    yield api
    api.stop()


@pytest.fixture
def twilio_api() -> Iterator[TwilioApi]:
    api = TwilioApi().start()
    yield api
    api.stop()


@pytest.fixture
def botframework_api() -> Iterator[BotFrameworkApi]:
    api = BotFrameworkApi().start()
    yield api
    api.stop()
