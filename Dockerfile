# syntax=docker/dockerfile:1
# Two images from one file:
#   --target operator  controller, webhook and node provisioner (no torch)
#   --target runtime   tuning and serving, run inside the workload pods
# Every Python package comes from requirements/*.txt at its locked version and hash
# (`make lock`); the dependency layers come before the source so a code change
# rebuilds only the last layers.
# hack/images.sh builds both without a registry: PYTHON_IMAGE is then a Debian bookworm
# base it makes with debootstrap (Python 3.11, a venv at /opt/venv first on PATH).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 65532 kaito && useradd --system --uid 65532 --gid kaito kaito
WORKDIR /app
COPY requirements/build.txt requirements/
RUN pip install --no-deps --require-hashes -r requirements/build.txt

FROM base AS operator
COPY requirements/operator.txt requirements/
RUN pip install --no-deps --require-hashes -r requirements/operator.txt
COPY pyproject.toml ./
COPY kaito ./kaito
COPY crds ./crds
COPY presets ./presets
COPY webhook ./webhook
COPY controller ./controller
RUN pip install --no-deps --no-build-isolation .
USER 65532:65532
ENTRYPOINT ["kaito"]
CMD ["controller"]

FROM base AS runtime
COPY requirements/runtime.txt requirements/nodeps.txt requirements/
RUN pip install --no-deps --require-hashes -r requirements/runtime.txt -r requirements/nodeps.txt
COPY pyproject.toml ./
COPY kaito ./kaito
COPY crds ./crds
COPY presets ./presets
COPY runtime ./runtime
RUN pip install --no-deps --no-build-isolation .
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["kaito"]
CMD ["serve", "--port", "5000"]
