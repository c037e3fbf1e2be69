# syntax=docker/dockerfile:1
#
# The AAMI config-server.
#
#   docker build -t aami-server .
#   docker run -p 8080:8080 aami-server          # embedded: SQLite + in-process jobs in /var/lib/aami
#
# Production (PostgreSQL + Redis): the same image runs every role, with the same settings:
#   docker run --env-file aami.env aami-server db upgrade     # once per deployment
#   docker run --env-file aami.env -p 8080:8080 aami-server   # N replicas
#   docker run --env-file aami.env aami-server worker         # N workers
#   docker run --env-file aami.env aami-server cron           # periodic jobs
# with AAMI_DATABASE_URL, AAMI_REDIS_URL and AAMI_SECRET_KEY (or AAMI_SECRET_KEY_FILE).
#
# tests/integration/test_dockerfile.py replays these steps without a Docker engine. Keep
# absolute paths out of RUN lines (name them with ENV/ARG, as below) so that it can.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a wheel of the project (agent, server and the Alembic migrations) -------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent/ agent/
COPY server/ server/
COPY migrations/ migrations/
RUN python -m pip wheel --no-deps --wheel-dir dist .

# --- runtime: the wheel with the server extra in a venv, run as an unprivileged user --------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="aami-server" \
      org.opencontainers.image.description="AAMI config-server: registers agents, assigns checks, ingests results" \
      org.opencontainers.image.licenses="Apache-2.0"

ARG WHEELS=/tmp/wheels
ENV VIRTUAL_ENV=/opt/aami \
    PATH=/opt/aami/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AAMI_DATA_DIR=/var/lib/aami

# A fixed numeric id, so that Kubernetes' runAsNonRoot can verify it and volumes can be
# prepared for it. Its home is the data directory (embedded SQLite file, generated key).
RUN groupadd --system --gid 10001 aami \
    && useradd --system --uid 10001 --gid aami --home-dir /var/lib/aami --no-create-home \
       --shell /usr/sbin/nologin aami \
    && install -d -o aami -g aami -m 0750 /var/lib/aami

COPY --from=builder /src/dist/ ${WHEELS}/
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install "$(ls "$WHEELS"/aami-*.whl)[server]" \
    && rm -rf "$WHEELS"

USER 10001:10001
WORKDIR /var/lib/aami
EXPOSE 8080

# No curl in slim images: the venv's Python asks /healthz (exit 0 only on 200).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["aami-server"]
# gevent: each parked long-poll is a greenlet, so one process carries thousands of agents.
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--worker-class", "gevent"]
