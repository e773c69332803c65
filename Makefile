# Two commands for a fresh machine:
#   make run    bring the whole system up locally (collector + persistor + graph service)
#   make test   run the whole test suite (what CI runs)
# The interpreter of the venv; empty: the distribution's python3 when usable, else
# python3 from PATH (deploy/make-venv.sh says why).
PY ?=
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .run
HTTP_PORT ?= 8999

# The sandbox's container setup (podman, podman-compose, a local base image),
# beside the repo clone; `make containers` runs it when present (see README.md, section Containers).
CONTAINERS_SETUP ?= $(CURDIR)/../shared/containers/setup.sh

.PHONY: venv build services containers run stop test lint unit bench clean

$(BIN)/graph-service: pyproject.toml setup.py
	bash deploy/make-venv.sh $(VENV) $(PY)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/graph-service

# Recompiles the pure core's C extensions after an edit (setup.py; incremental, and
# a no-op where Cython or a C compiler is missing: the modules then run as Python).
build: venv
	@$(BIN)/python setup.py -q build_ext --inplace 2>&1 | grep -v -e '_BetaConfiguration' -e 'warnings.warn(msg' >&2 || true

services:
	@bash deploy/ensure-services.sh

run: build services
	@bash deploy/run-local.sh

stop:
	@bash deploy/run-local.sh stop

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

containers:
	@bash deploy/prepare-containers.sh "$(CONTAINERS_SETUP)"

test: build services lint containers
	$(BIN)/pytest -q -p no:cacheprovider

unit: build
	$(BIN)/pytest -q -m "not integration and not containers"

bench: build services
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(RUN_DIR) *.egg-info build
	find rca_common graph_service -name '*.so' -delete
	find rca_common graph_service -name '*.c' -delete
