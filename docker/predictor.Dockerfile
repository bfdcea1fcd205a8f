# Predictor image (the chart's default predictor.image): TorchServe 0.12 CPU plus ONNX Runtime for the
# handler's ONNX backends (`onnx_int8` for MobileNetV2, `onnx` for ResNet50), the shipped defaults.
# Only an all-eager (PyTorch) deployment could run the stock
# pytorch/torchserve:0.12.0-cpu unchanged. Archives are not baked in: KServe mounts them at /mnt/models.
# docker build -f docker/predictor.Dockerfile -t image-moderation/predictor:0.1.0 .
# TORCHSERVE_IMAGE is the published base; `scripts/images.sh build` without Docker passes a Debian-assembled
# stand-in with the same layout (docker/README.md says what differs).
ARG TORCHSERVE_IMAGE=pytorch/torchserve:0.12.0-cpu

FROM ${TORCHSERVE_IMAGE}
USER 0
COPY docker/predictor-requirements.txt /tmp/requirements.txt
# The pip cache is a build cache mount: kept between builds, never part of a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
# `torchserve` as a container's PID 1 ignores SIGTERM (the kernel drops signals PID 1 does not handle): this
# launcher passes it on to the JVM, so a terminating pod stops in seconds instead of being killed at its deadline.
COPY docker/torchserve_init.py /opt/image-moderation/torchserve_init.py
# model-server (uid 1000) is the image's own user; the chart runs it read-only with /tmp as an emptyDir.
USER 1000:1000
ENTRYPOINT ["python", "/opt/image-moderation/torchserve_init.py"]
CMD ["--start", "--foreground", "--ncs", "--disable-token-auth", "--model-store=/mnt/models/model-store", "--ts-config=/mnt/models/config/config.properties"]
