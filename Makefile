# The two commands of the README: `make run` and `make test`.
# Each sets itself up first (scripts/bootstrap.sh), so a fresh machine needs nothing else.
.PHONY: run test bench setup train

VENV := .venv
BIN := $(VENV)/bin

setup:
	scripts/bootstrap.sh

run: setup
	scripts/run.sh

test:
	scripts/bootstrap.sh --system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy connectors omnidesk_sandbox actions
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/run.py

train: setup
	$(BIN)/rasa train --quiet
