# Set-up and everyday commands. `make demo` and `make test` work on a fresh Debian machine:
# they create .venv and install redis-server (and, for the end-to-end tests, Prometheus,
# Alertmanager and redis_exporter; for the PostgreSQL backend's tests, postgresql; for the incident page's
# browser test, chromium) with apt-get when missing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := redis-server redis-tools redis-sentinel prometheus prometheus-alertmanager prometheus-redis-exporter postgresql chromium

.PHONY: install system-deps demo demo-ha test test-fast lint lock format check bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: system-deps $(VENV)/.installed  ## venv with the project and its test tools, plus redis-server etc.

system-deps:  ## install the Debian packages the demo and tests run (needs root or sudo)
	@./scripts/ensure-system-deps $(SYSTEM_PACKAGES)

demo: install  ## the main job on the embedded default: no Slack, no external services
	$(BIN)/python -m bot.demo

demo-ha: install  ## three replicas on PostgreSQL: one killed mid-incident, another takes over, one execution
	$(BIN)/python -m bot.demo_ha

# The suite runs on one pytest-xdist worker per core (TEST_WORKERS=1 for one process); each worker
# starts its own redis-server, PostgreSQL and the rest. A test file stays on one worker, so a
# module's servers start once; files go out in collection order, the heavy ones first
# (tests/conftest.py). A single file still runs alone: .venv/bin/python -m pytest tests/test_x.py
TEST_WORKERS ?= auto
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install  ## the full suite on one worker per core (real redis-server, PostgreSQL; end-to-end with Prometheus, Alertmanager)
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: $(VENV)/.installed  ## the suite without the end-to-end and slow real-stack tests, stop at the first failure
	$(BIN)/python -m pytest -q $(XDIST) -m "not e2e and not slow" -x

lint: $(VENV)/.installed  ## ruff, ruff format --check, mypy --strict, hadolint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

lock:  ## re-pin the runtime dependencies the Docker image installs
	rm -rf .lockvenv && $(PY) -m venv .lockvenv && .lockvenv/bin/pip install --quiet .
	{ echo "# Pinned runtime dependencies for the Docker image (regenerate: make lock)."; \
	  .lockvenv/bin/pip freeze --exclude-editable | grep -v '^redis-remediation-bot'; } > requirements.lock
	rm -rf .lockvenv

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: $(VENV)/.installed  ## validate the example config and the bundled playbooks
	$(BIN)/python -m bot check --offline --config examples/bot.yaml

bench: $(VENV)/.installed  ## benchmarks against their baselines (default set about 6 min; BENCH_ARGS=--quick, --all, --large)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
