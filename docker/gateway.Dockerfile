# syntax=docker/dockerfile:1.7
# Image of the gateway (public RecommendationService): serving dependencies only (no torch, no training or dev extras).
# No extras: the gateway runs no model.
# Build from the repository root (docker/gateway.Dockerfile.dockerignore limits the context):
#   docker build -f docker/gateway.Dockerfile -t aisle-gateway:dev .
# No Docker engine runs on the build machines: tests/k8s/test_dockerfiles.py checks this file statically.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/aisle
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen/python/ gen/python/
COPY services/ services/
RUN /opt/aisle/bin/pip install . \
 && /opt/aisle/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aisle-gateway" \
      org.opencontainers.image.description="Aisle gateway service"
RUN groupadd --system --gid 10001 aisle \
 && useradd --system --uid 10001 --gid aisle --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin aisle
COPY --from=build /opt/aisle /opt/aisle
# Bytecode was compiled at install time; the root filesystem is read-only in Kubernetes.
ENV PATH=/opt/aisle/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/aisle
USER 10001:10001
EXPOSE 50060 9460
# Settings come from AISLE_GATEWAY_* variables (k8s/base/config/gateway.env); the process handles SIGTERM
# itself (NOT_SERVING, drain, grace), so it runs as PID 1 without a wrapper.
ENTRYPOINT ["python", "-m", "services.gateway"]
