# syntax=docker/dockerfile:1
#
# One image for the API, the worker and the migration step. The entry point
# is `python -m`, so the arguments name the module to run:
#
#   docker run IMAGE                    the API: python -m service
#   docker run IMAGE worker             the worker: python -m worker
#   docker run IMAGE service migrate    the migration step
#
# Build from the repository root: docker build -t nas-snapshots .

# NOTE: pinned by tag only. Add the digest (python:3.11.14-slim-bookworm@sha256:...)
# where the build can reach the registry, so that a rebuild gets the same base.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# The dependencies first, with the exact pins of pyproject.toml, so that a
# change to the source alone reuses this layer.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && pip install --requirement requirements.txt

# Then the project: pip builds it and installs the packages service, worker
# and nas (the committed generated code under protos/nas) with the SQL
# migrations into the venv, which is all the runtime stage copies.
COPY README.md ./
COPY protos/ protos/
COPY service/ service/
COPY worker/ worker/
RUN pip install --no-deps . \
    && python -c 'import nas.v1.snapshots_pb2, service.__main__, worker.__main__'


FROM ${PYTHON_IMAGE} AS runtime

# A numeric user, so that Kubernetes can check runAsNonRoot without reading
# /etc/passwd. /var/lib/nas-snapshots is the default NAS_DATA_ROOT: a Docker
# named volume mounted there takes this owner when it is first used.
RUN groupadd --system --gid 10001 nas \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nas \
    && install --directory --owner=10001 --group=10001 --mode=0750 /var/lib/nas-snapshots

COPY --from=builder /opt/venv /opt/venv
COPY deploy/healthcheck.py /opt/nas-snapshots/healthcheck.py

# PYTHONDONTWRITEBYTECODE: the root file system is read-only in Kubernetes,
# and pip already compiled the bytecode in the builder stage.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    NAS_GRPC_ADDRESS=0.0.0.0:50051 \
    NAS_DATA_ROOT=/var/lib/nas-snapshots

WORKDIR /opt/nas-snapshots
USER 10001:10001
# gRPC API, health (grpc.health.v1, plaintext), Prometheus metrics.
EXPOSE 50051 8081 9090

# Exec form: Python is process 1 and receives SIGTERM itself, which starts
# the graceful shutdown of the API and the worker.
ENTRYPOINT ["python", "-m"]
CMD ["service"]
