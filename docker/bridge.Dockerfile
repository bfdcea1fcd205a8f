# Kafka bridge image (helm value bridge.image): python -m bridge, non-root, read-only-root-FS friendly.
# Build from the repository root: docker build -f docker/bridge.Dockerfile -t image-moderation/bridge:0.1.0 .
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/bridge-requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-virtualenv -r /tmp/requirements.txt

FROM python:3.11.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_HOST=0.0.0.0
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The bridge and the shared contracts it imports (handlers/stack.py reads stack.env for local defaults).
COPY stack.env ./
COPY handlers/__init__.py handlers/stack.py handlers/envelopes.py handlers/errors.py handlers/
COPY bridge/ bridge/
USER 10001:10001
EXPOSE 8090
ENTRYPOINT ["python", "-m", "bridge"]
