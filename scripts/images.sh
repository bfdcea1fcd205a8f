#!/usr/bin/env bash
# Build the chart's images (Docker required):  scripts/images.sh build   (REGISTRY=… TAG=… optional)
# Names are the chart's defaults (image-moderation/{bridge,predictor}:<appVersion>); with REGISTRY they get
# that prefix, and the printed --set line points the chart at them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${TAG:-$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$ROOT/helm/image-moderation/Chart.yaml")}"
PREFIX="${REGISTRY:+$REGISTRY/}"
command -v docker >/dev/null || { echo "docker is not installed: build on a machine with Docker (see docker/README.md)" >&2; exit 1; }
cd "$ROOT"
docker build -f docker/bridge.Dockerfile -t "${PREFIX}image-moderation/bridge:$TAG" .
docker build -f docker/predictor.Dockerfile -t "${PREFIX}image-moderation/predictor:$TAG" .
echo "push: docker push ${PREFIX}image-moderation/bridge:$TAG && docker push ${PREFIX}image-moderation/predictor:$TAG"
echo "then: --set bridge.image.repository=${PREFIX}image-moderation/bridge,bridge.image.tag=$TAG" \
  "--set predictor.image.repository=${PREFIX}image-moderation/predictor,predictor.image.tag=$TAG"
