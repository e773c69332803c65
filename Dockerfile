# One image for the three services; the command picks the service:
#   docker run IMAGE graph-service | persistor-service | collector-stub [args]
# Configuration comes only from the environment (see .env.example).
#
# Where the official base image cannot be pulled, build on a local one:
#   podman build --build-arg BASE_IMAGE=localhost/python:3.11-slim-bookworm -t rca-graph .
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------- the dependency list only
# Its output changes only when the dependencies do (not on every edit of
# pyproject.toml), so the dependency layer below stays cached.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(d["build-system"]["requires"] + d["project"]["dependencies"]))' \
        > requirements.txt

# ---------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
WORKDIR /src

# A C compiler for this stage only: setup.py compiles the pure core with it (the final
# stage copies the venv, not the compiler). Where Debian's mirrors cannot be reached,
# the image is built without one and runs the pure core as Python (/status says so).
# (Python's headers too, where the base image's Python lacks them.)
RUN headers="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    pkgs="gcc libc6-dev"; [ -f "$headers/Python.h" ] || pkgs="$pkgs python3-dev"; \
    if apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $pkgs >/dev/null; \
    then rm -rf /var/lib/apt/lists/*; \
    else echo "rca-graph: no C compiler here; the image runs the pure core as Python" >&2; fi

# Dependencies first: this layer is rebuilt only when they change.
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -q -r /tmp/requirements.txt wheel

# The project itself, as a regular (non-editable) install into the venv; setup.py
# compiles the pure core when the compiler above is there.
COPY pyproject.toml setup.py ./
COPY rca_common ./rca_common
COPY graph_service ./graph_service
COPY persistor_service ./persistor_service
COPY collector_stub ./collector_stub
COPY failover_drill ./failover_drill
RUN /opt/venv/bin/pip install -q --no-deps --no-build-isolation . \
 && /opt/venv/bin/python -c "import graph_service.main, persistor_service.main, collector_stub.main" \
 && /opt/venv/bin/python -c "from rca_common import compiled; print('compiled:', compiled.status())"

# ---------------------------------------------------------------- final stage
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HTTP_HOST=0.0.0.0
RUN groupadd --gid 10001 rca \
 && useradd --uid 10001 --gid rca --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rca
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# graph-service HTTP API (HTTP_PORT) and persistor health (PERSISTOR_HTTP_PORT)
EXPOSE 8999 8998
# The services stop in two stages on SIGTERM (stop taking work, finish in-flight
# work within SHUTDOWN_TIMEOUT): give them more than that before SIGKILL.
STOPSIGNAL SIGTERM
CMD ["graph-service"]
