# gemma-server: `docker build -t gemma-server .` (CPU), `--build-arg JAX_FLAVOUR=cuda12` (NVIDIA
# GPUs) or `--build-arg JAX_FLAVOUR=tpu` (Cloud TPU VMs). README.md, section "Docker", shows how
# to run it; tests/ops/test_dockerfile.py lints this file and keeps README's commands in step.

# Build stage: a virtualenv with JAX and the package, the C++ CPU kernels compiled by g++ against
# jaxlib's XLA FFI headers. Only the virtualenv goes on to the runtime image (no compiler there).
FROM python:3.11-slim-bookworm AS build

# Debian's security updates replace a pinned version in the archive, which would break the build;
# the release is fixed by the base image tag instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv

ARG JAX_FLAVOUR=cpu
# JAX for the accelerator first, in its own layer: the largest download (CUDA's libraries are
# gigabytes) and the one that changes least. Not pinned here: pyproject.toml holds JAX's bound,
# and the package install below enforces it.
# hadolint ignore=DL3013
RUN case "$JAX_FLAVOUR" in \
        cpu) jax="jax" ;; \
        cuda12) jax="jax[cuda12]" ;; \
        tpu) jax="jax[tpu]" ;; \
        *) echo "JAX_FLAVOUR must be cpu, cuda12 or tpu, not '$JAX_FLAVOUR'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir "$jax"

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gemma_server ./gemma_server
# The package, installed exactly as README.md's "Docker" section says. On x86-64 the kernels
# must have been built (setup.py marks them optional, so a failed compile would pass silently).
RUN pip install --no-cache-dir . \
    && if [ "$(uname -m)" = "x86_64" ]; then \
        ls /opt/venv/lib/python3.11/site-packages/gemma_server/kernels/_cpu_kernels*.so \
            || { echo "the CPU kernels were not built" >&2; exit 1; }; \
    fi

# Runtime stage: the slim base, an unprivileged user and the virtualenv.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="gemma-server" \
      org.opencontainers.image.description="Gemma inference server on JAX (Workers AI and OpenAI APIs)" \
      org.opencontainers.image.licenses="Apache-2.0"

# /models: checkpoints, mounted read-only (-v /models:/models:ro). /cache (one named volume):
# jax/ the persistent compilation cache, huggingface/ Hub downloads, gemma_server/ the demo
# model. Owned by the user so that a new named volume starts out writable by it.
RUN groupadd --gid 1000 gemma \
    && useradd --uid 1000 --gid gemma --create-home --shell /usr/sbin/nologin gemma \
    && mkdir -p /models /cache/jax /cache/huggingface /cache/gemma_server \
    && chown -R gemma:gemma /cache

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GEMMA_SERVER_HOST=0.0.0.0 \
    GEMMA_SERVER_PORT=8000 \
    GEMMA_SERVER_COMPILATION_CACHE_DIR=/cache/jax \
    GEMMA_SERVER_CACHE=/cache/gemma_server \
    HF_HOME=/cache/huggingface

VOLUME ["/cache"]
EXPOSE 8000

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 1000:1000
WORKDIR /home/gemma

# /health answers 503 while the model loads and compiles (minutes for a large checkpoint on a
# first start, hence the long start period) and 200 once it serves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GEMMA_SERVER_PORT', '8000'), timeout=4)"]

# Settings come from GEMMA_SERVER_* variables (docker run -e ...) or flags appended to
# `docker run IMAGE`, e.g. `--checkpoint /models/gemma-2-2b-it --dtype bfloat16`. Change the
# port with GEMMA_SERVER_PORT rather than --port: the health check follows the variable.
ENTRYPOINT ["gemma-server", "serve"]
