"""The trained example bot, shared by every test that needs a model.

``example_bot_model`` trains the bot at the repository root when needed
(``rasa train --fixed-model-name example-bot`` into models/) and reuses the
model file when it is newer than every training file. The logic lives in
``tests.e2e.stack.ensure_model``, which the end-to-end stack and the
benchmarks use too, so there is one model and one rule for retraining it.
"""

import pathlib

import pytest

from tests.e2e.stack import ensure_model


@pytest.fixture(scope="session")
def example_bot_model() -> pathlib.Path:
    """models/example-bot.tar.gz, trained from the current domain, config and data."""
    return ensure_model()
