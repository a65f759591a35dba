# Two commands: `make demo` and `make test`. Both create/refresh .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit stress lint bench server postgres browser clean settings-table

# Rounds of the gc-vs-push stress test in `make test` (the full proof: `make stress`, 20).
REGISTRY_STRESS_ROUNDS ?= 4
export REGISTRY_STRESS_ROUNDS

venv: $(STAMP)

# torch first, pinned: the CPU wheel lies on this machine's disk; a looser spec pulls a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[worker,evals,dev]'
	touch $(STAMP)

demo: venv
	$(PY) -m cli.demo

postgres:
	@bash infra/ensure-postgres.sh

# Debian's chromium for the web UI's browser tests (apt-get when missing; they skip without it).
browser:
	@bash infra/ensure-chromium.sh

# Test files run in parallel on TEST_WORKERS processes (pytest-xdist; each has its own
# PostgreSQL database and S3 server); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: venv postgres browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

stress: venv postgres
	REGISTRY_STRESS_ROUNDS=20 $(PY) -m pytest -m stress $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check registry cli migrations tests bench tools
	$(VENV)/bin/mypy registry cli

bench: venv postgres
	$(PY) -m bench.run_all

server: venv
	$(VENV)/bin/adapter-registry server

# README's settings table, regenerated from registry.config.Settings.
settings-table: venv
	$(PY) -m tools.settings_table --write

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
