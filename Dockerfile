# One image for `shoal worker` and (with the operator extra) `shoal-operator`.
# Users extend it: FROM shoal, COPY their task module, set the worker's MODULE in the Worker CR.

FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY operator ./operator
RUN python -m venv /opt/shoal \
 && /opt/shoal/bin/pip install --no-cache-dir '.[operator]'

FROM python:3.11.10-slim-bookworm
COPY --from=build /opt/shoal /opt/shoal
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin shoal
ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /app
ENTRYPOINT ["shoal"]
CMD ["--help"]
