# Proxima: `make up` runs the whole stack locally, `make test` runs the full suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch + torchvision are installed first, as a matching pair. Override for another build, e.g.
#   make venv TORCH_SPEC="torch torchvision" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: venv up test lint redis-server chromium clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_INDEX) $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Debian packages, installed when missing and we may (root, or password-less sudo).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || sh scripts/install_apt.sh redis-server

# The browser the UI test drives (through Playwright, with this executable).
chromium:
	@command -v chromium >/dev/null 2>&1 || sh scripts/install_apt.sh chromium

up: venv redis-server
	$(PY) scripts/up.py

# Two pytest workers (pytest-xdist): most tests wait on real services, so two run in the time of one.
# Grouped by module and by backend (tests/conftest.py: xdist_scope); `TEST_WORKERS=0` runs them one by one.
TEST_WORKERS ?= 2

test: venv redis-server chromium
	$(PY) -m ruff check .
	$(PY) -m mypy api workers shared ui
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy api workers shared ui

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
