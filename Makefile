# Two commands for a fresh machine:
#   make run    bring the whole system up locally (collector + persistor + graph service)
#   make test   run the whole test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .run
HTTP_PORT ?= 8999

.PHONY: venv services run stop test lint unit bench clean

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

test: venv services lint
	$(BIN)/pytest -q -p no:cacheprovider

unit: venv
	$(BIN)/pytest -q -m "not integration"

bench: venv services
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(RUN_DIR) *.egg-info
