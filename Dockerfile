# The Shoal image: one image for `shoal worker` (the entrypoint) and `shoal-operator` (the Helm
# chart sets `command: [shoal-operator]`). Users extend it with their task code: see
# examples/Dockerfile. Build: docker build -t shoal:0.1.0 .

# One pinned base for both stages: the venv built in the first is copied into the second, so the
# Python it links against must be the same.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: a self-contained venv at /opt/shoal ------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY operator ./operator
# The CRDs ship inside the package too (runtime/shoal/crds links here): `shoal dev` checks
# manifests against them.
COPY crds ./crds
# Wheels only at run time (hiredis, orjson ship binary wheels): no compiler in either stage.
RUN python -m venv /opt/shoal \
 && /opt/shoal/bin/pip install --no-cache-dir '.[operator,dashboard]' \
 && /opt/shoal/bin/shoal version

# --- runtime: the venv, a non-root user, nothing else -----------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="Kubernetes-native Python task queue: worker and operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 shoal \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin shoal
# Root-owned and read-only to the user: the pods run with readOnlyRootFilesystem anyway.
COPY --from=build /opt/shoal /opt/shoal
ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
# Worker health (/livez, /readyz), worker metrics (/metrics), operator liveness (/healthz).
EXPOSE 8080 9100 8081
ENTRYPOINT ["shoal"]
CMD ["--help"]
