# Kafka bridge image (helm value bridge.image): python -m bridge, non-root, read-only-root-FS friendly.
# Build from the repository root: docker build -f docker/bridge.Dockerfile -t image-moderation/bridge:0.1.0 .
# PYTHON_IMAGE is the published base; `scripts/images.sh build` without Docker passes a Debian-assembled
# stand-in (docker/README.md says what differs).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/bridge-requirements.txt /tmp/requirements.txt
# The pip cache is a build cache mount: kept between builds, never part of a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-virtualenv -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_HOST=0.0.0.0
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The bridge and the shared contracts it imports (handlers/stack.py reads stack.env for local defaults).
COPY stack.env ./
COPY handlers/__init__.py handlers/stack.py handlers/env.py handlers/envelopes.py handlers/errors.py handlers/outputs.py handlers/fetch.py handlers/
COPY bridge/ bridge/
USER 10001:10001
EXPOSE 8090
ENTRYPOINT ["python", "-m", "bridge"]
