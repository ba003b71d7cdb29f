# servergroup: `make demo` and `make test` set everything up on a fresh
# Debian machine (root, Python 3.11) and are safe to run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test test-slow lint bench system-deps venv bytecode guest-image clean help

help:
	@echo "make demo   - set up and run the servergroup demo"
	@echo "make test   - set up and run the test suite"
	@echo "make test-slow - run the slow tests (the 100-round exactly-one fault runs)"
	@echo "make lint   - ruff, mypy --strict, import-linter contracts"
	@echo "make bench  - run the benchmarks (results under bench/results/)"

system-deps:
	@bash scripts/install-system-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Byte-compiled modules, as an installed package has them: with
# PYTHONDONTWRITEBYTECODE set (some shells and CI set it) Python never writes
# them, and every daemon, CLI command and helper process the demo and the tests
# start would compile its sources again (~0.1 s of CPU each; a quarter of the
# CPU of a test of the CLI and the daemons). Only what changed is compiled again.
bytecode: venv
	@$(BIN)/python -m compileall -q -j 0 src tests bench

# The qemu driver's guest: kernel and initramfs from Debian packages, cached
# (a no-op once built); the guest's disk is built on first boot.
guest-image: system-deps venv bytecode
	@$(BIN)/python -m servergroup.servers.drivers.qemu.image

demo: system-deps venv bytecode guest-image
	$(BIN)/servergroup demo

# The suite runs on TEST_WORKERS pytest-xdist workers (tests booting QEMU guests
# share one: see tests/conftest.py). Its temporary directories live under a short
# base of their own, removed afterwards: unix socket paths must stay under 108 bytes.
TEST_WORKERS ?= 2
PYTEST_RUN = base=$$(mktemp -d /tmp/sgt.XXXXXX) && \
	{ $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --basetemp=$$base $(1); \
	rc=$$?; rm -rf $$base; exit $$rc; }

test: system-deps venv bytecode guest-image
	@$(call PYTEST_RUN,--durations=25 tests)

test-slow: system-deps venv bytecode guest-image
	@$(call PYTEST_RUN,-m slow tests)

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: system-deps venv bytecode guest-image
	@bash scripts/install-system-deps --bench
	$(BIN)/python bench/coordination.py
	$(BIN)/python bench/messaging.py
	$(BIN)/python bench/multicast.py
	$(BIN)/python bench/vm.py
	$(BIN)/python bench/operations.py
	$(BIN)/python bench/evacuation.py
	$(BIN)/python bench/replication.py
	$(BIN)/python bench/failover.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
