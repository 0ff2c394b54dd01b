# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:5000
DATA ?= ./data

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The base of `make image`: Debian's packages (no image registry needed), see the Dockerfile.
BASE_IMAGE ?= cangku-base:bookworm
DEBIAN_MIRROR ?= $(shell awk '/^URIs:/ {print $$2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)

.PHONY: run test test-postgresql check install bench clean image base-image

$(BIN)/cangku: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/cangku

install: $(BIN)/cangku

run: install
	$(BIN)/cangku serve --listen $(LISTEN) --data $(DATA)

# Tests marked `postgresql` need a PostgreSQL (migrate-storage into PostgreSQL + S3, the
# three replicas behind nginx): they run in `make test-postgresql`.
test: install
	$(BIN)/pytest -m "not postgresql"

# The API, account and UI tests again, each on a fresh PostgreSQL database (.ci/run sets
# up the server and the role); then the tests that need PostgreSQL itself (marked
# `postgresql`: `migrate-storage` into PostgreSQL + S3 and back, and the three replicas behind
# nginx; these also need CANGKU_TEST_S3).
POSTGRES_ADMIN_URL ?= postgresql+psycopg://cangku:cangku@127.0.0.1:5432/postgres
test-postgresql: install
	CANGKU_TEST_POSTGRES=$(POSTGRES_ADMIN_URL) $(BIN)/pytest tests/api tests/auth tests/web tests/metadata tests/registry
	CANGKU_TEST_POSTGRES=$(POSTGRES_ADMIN_URL) $(BIN)/pytest -m postgresql

check: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/registry_benchmark.py

# cangku:latest and cangku:VERSION, offline: the wheels are built here (pip's index and
# cache), the base image comes from debootstrap (once; `make base-image` to remake it).
image: install
	rm -rf build/wheelhouse
	$(BIN)/pip wheel --quiet --wheel-dir build/wheelhouse '.[postgresql,otel]'
	docker image inspect $(BASE_IMAGE) >/dev/null 2>&1 || $(MAKE) base-image
	DOCKER_BUILDKIT=0 docker build --quiet --build-arg BASE=$(BASE_IMAGE) \
		-t cangku:latest -t cangku:$(VERSION) .

base-image:
	rm -rf build/rootfs
	debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
		bookworm build/rootfs $(or $(DEBIAN_MIRROR),$(error no Debian mirror in /etc/apt/sources.list.d/*.sources; pass DEBIAN_MIRROR=URL))
	tar -C build/rootfs -c . | docker import - $(BASE_IMAGE)
	rm -rf build/rootfs

clean:
	rm -rf $(VENV) build *.egg-info
