# syntax=docker/dockerfile:1.7
# Image of the retrieval service: serving dependencies only (no torch, no training or dev extras).
# The `cpu` extra: ONNX Runtime runs the query tower an index version may ship (query_tower.onnx) on CPU.
# Build from the repository root (docker/retrieval.Dockerfile.dockerignore limits the context):
#   docker build -f docker/retrieval.Dockerfile -t aisle-retrieval:dev .
# No Docker engine runs on the build machines: tests/k8s/test_dockerfiles.py checks this file statically.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/aisle
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen/python/ gen/python/
COPY services/ services/
RUN /opt/aisle/bin/pip install ".[cpu]" \
 && /opt/aisle/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aisle-retrieval" \
      org.opencontainers.image.description="Aisle retrieval service"
RUN groupadd --system --gid 10001 aisle \
 && useradd --system --uid 10001 --gid aisle --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin aisle
COPY --from=build /opt/aisle /opt/aisle
# Bytecode was compiled at install time; the root filesystem is read-only in Kubernetes.
ENV PATH=/opt/aisle/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/aisle
USER 10001:10001
EXPOSE 50061 9461
# Settings come from AISLE_RETRIEVAL_* variables (k8s/base/config/retrieval.env); the process handles SIGTERM
# itself (NOT_SERVING, drain, grace), so it runs as PID 1 without a wrapper.
ENTRYPOINT ["python", "-m", "services.retrieval"]
