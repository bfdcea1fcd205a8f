# KServe-runtime predictor image (helm value runtime=kserve): `python -m kserve_runtime` serves the .mar archives
# of /mnt/models/model-store on KServe's Python ModelServer with ONNX Runtime only (no torch, no Java), REST and
# Prometheus metrics on :8080, OIP v2 gRPC on :8081. Non-root, read-only-root-FS friendly (archives unpacked
# under /tmp, an emptyDir in the pod). The ONNX backends only: `eager` and `:explain` need torch (+ captum),
# i.e. the TorchServe predictor image (docker/predictor.Dockerfile).
# Build from the repository root: docker build -f docker/kserve-predictor.Dockerfile -t image-moderation/kserve-predictor:0.1.0 .
# PYTHON_IMAGE is the published base; `scripts/images.sh build` without Docker passes a Debian-assembled
# stand-in (docker/README.md says what differs).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/kserve-predictor-requirements.txt /tmp/requirements.txt
# The pip cache is a build cache mount: kept between builds, never part of a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-virtualenv -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    KSERVE_HOST=0.0.0.0 \
    KSERVE_HTTP_PORT=8080 \
    KSERVE_GRPC_PORT=8081 \
    KSERVE_MODEL_STORE=/mnt/models/model-store \
    KSERVE_WORKDIR=/tmp/kserve-runtime
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The runtime and the torch-free handler modules it imports (handlers/stack.py reads stack.env for defaults).
COPY stack.env ./
COPY handlers/ handlers/
COPY kserve_runtime/ kserve_runtime/
# uid/gid 1000 like the TorchServe predictor image: the chart's predictor securityContext fits both runtimes.
USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kserve_runtime"]
