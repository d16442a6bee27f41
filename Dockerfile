# syntax=docker/dockerfile:1
# One image for every ampgate service: `docker run IMAGE gateway|history|webhooks|sandbox|dev`.
#   docker build -t ampgate:local .
# Containers listen on 0.0.0.0:8080 (AMPGATE_HTTP__HOST / AMPGATE_HTTP__PORT) and keep their
# state (outbox, SQLite) in /var/lib/ampgate (AMPGATE_STATE_DIR); the root filesystem may be
# read-only.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the project into /opt/venv -------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# bash with pipefail: a failing command on the left of a pipe fails the RUN (hadolint DL4006).
# No `cmd | grep -q`: grep quitting early would SIGPIPE cmd and fail the pipe; test $(...) instead.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY . .
# The build itself compiles proto-schemas/ (setup.py's build step, with grpcio-tools from the
# isolated build environment: protoc never reaches the final image). Generated code is
# git-ignored and excluded by .dockerignore, so it always comes from the schemas.
RUN /opt/venv/bin/pip install .
# Import from outside the sources: proves the installed package carries the generated code.
WORKDIR /
RUN /opt/venv/bin/python -c "import services.common.events.schemas" \
 && /opt/venv/bin/ampgate --version

# --- runtime: the venv, a non-root user, nothing else ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ampgate" \
      org.opencontainers.image.description="One gateway in front of the battery passport, charging-station and pricing APIs, with change events on Kafka." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AMPGATE_HTTP__HOST=0.0.0.0 \
    AMPGATE_HTTP__PORT=8080 \
    AMPGATE_STATE_DIR=/var/lib/ampgate \
    AMPGATE_LOG__FORMAT=json
# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot (the Helm chart uses 10001).
RUN groupadd --system --gid 10001 ampgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /var/lib/ampgate --shell /usr/sbin/nologin ampgate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/ampgate
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/ampgate
EXPOSE 8080
# stdlib only (no curl in the slim image); follows AMPGATE_HTTP__PORT if it is overridden.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AMPGATE_HTTP__PORT', '8080'), timeout=4)"]
ENTRYPOINT ["ampgate"]
CMD ["gateway"]
