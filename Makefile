# The two commands of the README: `make run` and `make test`.
# Each sets itself up first (scripts/bootstrap.sh), so a fresh machine needs nothing else.
.PHONY: run test test-pro bench setup train

VENV := .venv
BIN := $(VENV)/bin
# The second test environment: Python 3.11 with the newest rasa-pro 3.x.
PRO_BIN := .venv-pro/bin

setup:
	scripts/bootstrap.sh

run: setup
	scripts/run.sh

# Lint and every test on Rasa Open Source 3.6.21, then the tests again on Rasa Pro.
test:
	scripts/bootstrap.sh --system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy connectors omnidesk_sandbox actions rasa_omnidesk
	$(BIN)/pytest
	$(MAKE) --no-print-directory test-pro

# Every test that needs no Rasa Pro license; those that run the rasa command line
# skip unless RASA_LICENSE is set (tests/conftest.py).
test-pro:
	scripts/bootstrap.sh --pro
	LITELLM_LOCAL_MODEL_COST_MAP=True $(PRO_BIN)/pytest

bench: setup
	$(BIN)/python bench/run.py

train: setup
	$(BIN)/rasa train --quiet
