# prodguard — the two commands: `make demo` and `make test`.
# Both create .venv and install the pinned dependencies on a fresh machine by themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Telemetry of every tool stays off.
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export FEAST_USAGE := False
export TQDM_DISABLE := 1

.PHONY: demo test test-reliability lint lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prodguard demo

# unit, integration and end-to-end tests (PostgreSQL and Redis on localhost for the production ones)
test: $(STAMP)
	$(BIN)/pytest -m "not reliability"

# fault injection with real processes (kill -9, servers stopped, malformed input at scale);
# .ci/run runs it after `make test`
test-reliability: $(STAMP)
	$(BIN)/pytest -m reliability

# Import contracts (pyproject [tool.importlinter]), ruff, formatting, types (pyproject [tool.mypy]).
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests feature_repo
	$(BIN)/ruff format --check src tests feature_repo
	$(BIN)/mypy src

# Re-resolve the pinned set after changing a pin in pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v '^prodguard' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .prodguard
