# Two commands for a fresh machine:
#   make run    bring the whole system up locally (collector + persistor + graph service)
#   make test   run the whole test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .run
HTTP_PORT ?= 8999

# The sandbox's container setup (podman, podman-compose, a local base image),
# beside the repo clone; `make containers` runs it when present (see README.md, section Containers).
CONTAINERS_SETUP ?= $(CURDIR)/../shared/containers/setup.sh

.PHONY: venv services containers run stop test lint unit bench clean

$(BIN)/graph-service: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/graph-service

services:
	@bash deploy/ensure-services.sh

run: venv services
	@bash deploy/run-local.sh

stop:
	@bash deploy/run-local.sh stop

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

containers:
	@bash deploy/prepare-containers.sh "$(CONTAINERS_SETUP)"

test: venv services lint containers
	$(BIN)/pytest -q -p no:cacheprovider

unit: venv
	$(BIN)/pytest -q -m "not integration and not containers"

bench: venv services
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(RUN_DIR) *.egg-info
