# The two set-up commands of the README: `make demo` and `make test` (`make images`, the
# container images alone, is a helper of the tests and of docs/deploy.md).
# Each creates (or reuses) .venv with Python 3.11, installs the project, and runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint images models bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleet-sim demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	# The gateway's tests once more, every gateway on a real PostgreSQL server (skipped
	# without Debian's postgresql package outside CI; .ci/run installs it).
	EDGECLOUD_TEST_DATABASE=postgresql $(BIN)/python -m pytest -q tests/cloud_gateway \
		--ignore=tests/cloud_gateway/test_postgres_failover.py

# Container images with podman (docker/images.py; needs podman, runc, and debootstrap
# when the official base images cannot be pulled). Prints sizes and build times.
images: $(STAMP)
	$(BIN)/python docker/images.py build --json var/images.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var reports test-artifacts
