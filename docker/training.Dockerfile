# syntax=docker/dockerfile:1.7
# Image for training jobs (`aisle train`, and the cpu overlay's seed-artifacts Job): the `train` extra (torch,
# onnx, onnxscript) and `cpu` (onnxruntime, for the export's parity check). Never deployed as a service.
# torch comes from PyTorch's CPU wheel index: the PyPI wheel of the same version pulls the CUDA libraries (GBs).
# For GPU training, build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (or similar).
# Build from the repository root (docker/training.Dockerfile.dockerignore limits the context):
#   docker build -f docker/training.Dockerfile -t aisle-training:dev .
# No Docker engine runs on the build machines: tests/k8s/test_dockerfiles.py checks this file statically.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The train extra's pin (pyproject.toml; tests/k8s/test_dockerfiles.py keeps the two equal).
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/aisle
WORKDIR /src
# torch first, from the CPU index; the project's install then finds the pinned version already there.
RUN /opt/aisle/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY gen/python/ gen/python/
COPY services/ services/
COPY training/ training/
RUN /opt/aisle/bin/pip install ".[cpu,train]" \
 && /opt/aisle/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aisle-training" \
      org.opencontainers.image.description="Aisle training jobs"
RUN groupadd --system --gid 10001 aisle \
 && useradd --system --uid 10001 --gid aisle --create-home --home-dir /home/aisle --shell /usr/sbin/nologin aisle
COPY --from=build /opt/aisle /opt/aisle
# The model repository's contract (config.pbtxt and configs/; versions are excluded from the build context):
# a training job copies it into the repository it exports to.
COPY model_repository/ /opt/aisle/model_repository/
ENV PATH=/opt/aisle/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /home/aisle
USER 10001:10001
ENTRYPOINT ["aisle"]
CMD ["train", "--help"]
