"""The trained example bot, shared by every test that needs a model.

``example_bot_model`` trains the bot at the repository root once per test run
(``rasa train --fixed-model-name example-bot`` into models/) and reuses the
model file when it is newer than every training file, so end-to-end tests can
start ``rasa run --model models/example-bot.tar.gz`` without training again.
"""

import os
import pathlib
import subprocess
import sys
from typing import Iterable

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_NAME = "example-bot"
MODEL_PATH = ROOT / "models" / f"{MODEL_NAME}.tar.gz"
RASA = pathlib.Path(sys.executable).parent / "rasa"
TRAIN_TIMEOUT = 300


def training_files() -> Iterable[pathlib.Path]:
    yield ROOT / "domain.yml"
    yield ROOT / "config.yml"
    yield from sorted((ROOT / "data").rglob("*.yml"))


def model_is_current() -> bool:
    if not MODEL_PATH.exists():
        return False
    built = MODEL_PATH.stat().st_mtime
    return all(path.stat().st_mtime <= built for path in training_files())


def rasa_env() -> "dict[str, str]":
    env = dict(os.environ)
    env.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    return env


@pytest.fixture(scope="session")
def example_bot_model() -> pathlib.Path:
    """models/example-bot.tar.gz, trained from the current domain, config and data."""
    if not model_is_current():
        trained = subprocess.run(
            [
                str(RASA),
                "train",
                "--quiet",
                "--fixed-model-name",
                MODEL_NAME,
                "--out",
                str(MODEL_PATH.parent),
            ],
            cwd=ROOT,
            env=rasa_env(),
            capture_output=True,
            text=True,
            timeout=TRAIN_TIMEOUT,
        )
        assert trained.returncode == 0, f"rasa train failed:\n{trained.stdout}\n{trained.stderr}"
        assert MODEL_PATH.exists(), f"rasa train did not write {MODEL_PATH}"
    return MODEL_PATH
