# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:5000
DATA ?= ./data

.PHONY: run test test-postgresql check install bench clean

$(BIN)/cangku: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/cangku

install: $(BIN)/cangku

run: install
	$(BIN)/cangku serve --listen $(LISTEN) --data $(DATA)

test: install
	$(BIN)/pytest

# The API, account and UI tests again, each on a fresh PostgreSQL database (.ci/run sets
# up the server and the role).
POSTGRES_ADMIN_URL ?= postgresql+psycopg://cangku:cangku@127.0.0.1:5432/postgres
test-postgresql: install
	CANGKU_TEST_POSTGRES=$(POSTGRES_ADMIN_URL) $(BIN)/pytest tests/api tests/auth tests/web

check: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/registry_benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info
