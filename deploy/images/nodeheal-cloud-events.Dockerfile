# syntax=docker/dockerfile:1.7
# Image of the nodeheal-cloud-events distribution, and nothing else of the workspace: uv installs exactly what
# `uv sync --package nodeheal-cloud-events` resolves from the one lock file (its workspace dependencies included,
# not editable), into /venv. Build from the repository root:
#   docker build -f deploy/images/nodeheal-cloud-events.Dockerfile -t ghcr.io/nodeheal/nodeheal-cloud-events:0.1.0 .
# One image, three processes: `python -m nodeheal.cloud_events ingest|prober|inventory`
# (the manifests pass the part as an argument).
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY schemas schemas
COPY runtime runtime
COPY services services
COPY cli cli
COPY sim sim
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package nodeheal-cloud-events

FROM python:3.11-slim-bookworm
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# the manifests run every container with a read-only root file system and this user
USER 65532:65532
EXPOSE 8080
CMD ["python", "-m", "nodeheal.cloud_events"]
