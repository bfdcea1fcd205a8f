#!/usr/bin/env bash
# The chart's images, built from docker/*.Dockerfile and cached as OCI archives outside the clone.
#   scripts/images.sh build [NAME...]  build what changed (Docker if an engine answers, else Debian's buildah)
#   scripts/images.sh load [NAME...]   build if needed, then import into containerd (skips equal digests)
# NAME: bridge, predictor, kafka or kserve-predictor; default all four.
#   scripts/images.sh archive NAME     print the archive path of NAME for the current sources
#   scripts/images.sh refs             print the image names (one per line)
# Names: docker.io/image-moderation/{bridge,predictor,kserve-predictor}:<appVersion> (the chart's defaults, fully
# qualified as containerd stores them; kserve-predictor is the image of the chart's `runtime: kserve`) and …/kafka
# (the local cluster's broker, cluster/manifests/kafka.yaml); REGISTRY=… and TAG=… change them.
# Without Docker, the registry bases cannot be pulled: stand-ins are assembled from Debian with debootstrap and
# the pinned wheels from PyPI, and passed through the Dockerfiles' base-image build arguments (docker/README.md).
# Cache: IMAGE_CACHE (default ~/.cache/image-moderation/images) holds the archives, keyed by a hash of everything
# that goes into an image (Dockerfile, build context, base recipe), so an unchanged image is never rebuilt, plus
# the debootstrapped root filesystems. pip's own HTTP cache stores nothing here (the egress proxy strips PyPI's
# Cache-Control), so every pip step of a local build installs offline from the wheelhouse `make setup` also uses
# (scripts/wheelhouse.sh: WHEELHOUSE), which `pip download` fills once (only missing wheels are fetched; the
# torchserve base's torch and CUDA wheels are the .venv's own).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${TAG:-$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$ROOT/helm/image-moderation/Chart.yaml")}"
PREFIX="${REGISTRY:-docker.io}/image-moderation"
IMAGE_CACHE="${IMAGE_CACHE:-$HOME/.cache/image-moderation/images}"
WHEELS="$("$ROOT/scripts/wheelhouse.sh" path)"
CONTAINERD_ADDRESS="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
IMAGES=(bridge predictor kafka kserve-predictor)  # kafka: the local cluster's broker, not a chart image
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"  # build steps without runc's cgroup/OOM-score setup (cgroup v1 VM, no CAP_SYS_RESOURCE)
NICE=(nice -n 10)                                         # 2 shared cores

# Base recipes (stand-ins for the published bases; every value below is part of the base's cache key).
DEBIAN_SUITE="bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON_PACKAGES="python3.11,python3-venv,python-is-python3,ca-certificates"
TORCHSERVE_PACKAGES="$PYTHON_PACKAGES,openjdk-17-jre-headless"
JRE_PACKAGES="openjdk-17-jre-headless,ca-certificates"
TORCHSERVE_PIP="pip==26.3"                                # the base venv's pip (Debian's ensurepip has 23.0.1)
TORCHSERVE_REQUIREMENTS="docker/torchserve-base-requirements.txt"
BASE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

LOG_DIR="$IMAGE_CACHE/logs"
T0=$SECONDS

say() { echo "[images] $*"; }

phase() {  # phase LABEL CMD... : run CMD with its output in a log; one line with the duration when done
  local label="$1" start=$SECONDS log; shift
  log="$LOG_DIR/$(echo "${label%% (*}" | tr -c 'a-zA-Z0-9\n' '-').log"
  if "$@" >"$log" 2>&1; then
    say "$label: $((SECONDS - start))s"
  else
    say "$label: FAILED after $((SECONDS - start))s; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

ref() { echo "$PREFIX/$1:$TAG"; }

docker_engine() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

builder() { if docker_engine; then echo docker; else echo buildah; fi; }

sha() { sha256sum | cut -c1-16; }

# --- build contexts --------------------------------------------------------------------------------------
# Each image gets a context with exactly the files its Dockerfile copies (no .venv, no __pycache__): Docker sends
# less, and the hash of that folder is the image's content key.

copy_sources() {  # copy_sources DOCKERFILE : the source operands of every COPY/ADD without --from
  awk '$1 == "COPY" || $1 == "ADD" {
         from = 0; n = 0
         for (i = 2; i <= NF; i++) { if ($i ~ /^--from/) from = 1; else if ($i !~ /^--/) ops[++n] = $i }
         if (!from) for (i = 1; i < n; i++) print ops[i]
       }' "$1"
}

stage_context() {  # stage_context NAME : sets CONTEXT, a fresh folder with the image's build context (removed on exit)
  local name="$1" dir src
  # The broker's jars come from Maven Central (kafka/pom.xml) into .cache/kafka/libs, once.
  if [[ $name == kafka ]]; then "$ROOT/scripts/kafka.sh" fetch >&2; fi
  mkdir -p "$IMAGE_CACHE/context"
  dir="$(mktemp -d "$IMAGE_CACHE/context/$name.XXXXXX")"
  CONTEXTS+=("$dir"); chmod 755 "$dir"; mkdir -p "$dir/docker"
  cp "$ROOT/docker/$name.Dockerfile" "$dir/docker/"
  while read -r src; do
    (cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - "${src%/}") | tar -xf - -C "$dir"
  done < <(copy_sources "$ROOT/docker/$name.Dockerfile")
  CONTEXT="$dir"
}

tree_hash() {  # tree_hash DIR : content hash of a folder (names, modes, bytes; not times or owners)
  tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | sha
}

# --- local bases (buildah only) --------------------------------------------------------------------------

packages_of() {
  case "$1" in torchserve) echo "$TORCHSERVE_PACKAGES" ;; jre) echo "$JRE_PACKAGES" ;; *) echo "$PYTHON_PACKAGES" ;; esac
}

rootfs_key() {  # rootfs_key python|torchserve : what debootstrap gets
  { declare -f debootstrap_rootfs; echo "$DEBIAN_SUITE $DEBIAN_MIRROR $(packages_of "$1")"; } | sha
}

base_key() {  # base_key python|torchserve
  { rootfs_key "$1"; declare -f build_base fetch_wheels "build_${1}_base"
    echo "$DEBIAN_SUITE $DEBIAN_MIRROR ${BASE_ENV[*]}"
    if [[ $1 == torchserve ]]; then echo "$TORCHSERVE_PACKAGES $TORCHSERVE_PIP"; cat "$ROOT/$TORCHSERVE_REQUIREMENTS"
    else packages_of "$1"; fi
  } | sha
}

base_ref() { echo "localhost/image-moderation/$1-base:$(base_key "$1")"; }

debootstrap_rootfs() {  # debootstrap_rootfs TARBALL PACKAGES : Debian minbase + PACKAGES, as a tarball
  local tarball="$1" dir="${1%.tar}"
  rm -rf "$dir"; mkdir -p "$dir"
  "${NICE[@]}" debootstrap --variant=minbase --include="$2" "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/* "$dir"/tmp/* "$dir"/root/.cache
  tar -C "$dir" --numeric-owner --sort=name --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
  rm -rf "$dir"
}

build_base() {  # build_base KIND : sets CTR, a buildah container of the debootstrapped rootfs
  local tarball="$IMAGE_CACHE/rootfs/$1-$(rootfs_key "$1").tar" env
  mkdir -p "$IMAGE_CACHE/rootfs"
  if [[ -f $tarball ]]; then say "$1 base: rootfs cached ($tarball)"
  else phase "$1 base: debootstrap $DEBIAN_SUITE ($(packages_of "$1"))" debootstrap_rootfs "$tarball" "$(packages_of "$1")"; fi
  CTR="$(buildah from --quiet scratch)"
  phase "$1 base: add rootfs" buildah add --quiet "$CTR" "$tarball" /
  for env in "${BASE_ENV[@]}"; do buildah config --env "$env" "$CTR"; done
}

build_python_base() {  # stand-in for python:3.11.11-slim-bookworm
  build_base python
  buildah config --cmd '["python3"]' "$CTR"
  phase "python base: commit" buildah commit --quiet --rm "$CTR" "$(base_ref python)"
}

build_jre_base() {  # stand-in for eclipse-temurin:17-jre: Debian's OpenJDK 17 runtime
  build_base jre
  buildah config --cmd '["java", "-version"]' "$CTR"
  phase "jre base: commit" buildah commit --quiet --rm "$CTR" "$(base_ref jre)"
}

build_torchserve_base() {  # stand-in for pytorch/torchserve:0.12.0-cpu: same user, venv, paths and ports
  build_base torchserve
  buildah run "$CTR" -- python3 -m venv /home/venv
  { echo "$TORCHSERVE_PIP"; cat "$ROOT/$TORCHSERVE_REQUIREMENTS"; } > "$WHEELS/.requirements/torchserve-base.txt"
  fetch_wheels torchserve-base "$CTR" /home/venv/bin/pip
  phase "torchserve base: venv + pip install ($(grep -c '==' "$ROOT/$TORCHSERVE_REQUIREMENTS") pins, offline)" \
    buildah run "${BUILD_MOUNTS[@]}" "$CTR" -- nice -n 10 sh -ec "
        useradd --create-home --uid 1000 --user-group --shell /bin/bash model-server
        mkdir -p /home/model-server/tmp /home/model-server/model-store
        printf '%s\n' inference_address=http://0.0.0.0:8080 management_address=http://0.0.0.0:8081 \
          metrics_address=http://0.0.0.0:8082 model_store=/home/model-server/model-store \
          > /home/model-server/config.properties
        /home/venv/bin/pip install --quiet '$TORCHSERVE_PIP'
        /home/venv/bin/pip install -r /mnt/.requirements/torchserve-base.txt
        find /home/venv -name __pycache__ -prune -exec rm -rf {} +
        chown -R model-server:model-server /home/model-server /home/venv
        java -XX:-UsePerfData -version && /home/venv/bin/torchserve --help >/dev/null"
  # /etc/pip.conf stays as a real (comment-only) file: the predictor build bind-mounts its offline pip
  # configuration there, and a mount over an existing file leaves nothing behind in the new layer.
  buildah run "$CTR" -- sh -c 'rm -rf /tmp/* /root/.cache
    echo "# pip configuration (none): local stand-in base, see docker/README.md" > /etc/pip.conf'
  buildah config --env PATH=/home/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PYTHONUNBUFFERED=TRUE --env TEMP=/home/model-server/tmp \
    --port 8080 --port 8081 --port 8082 --port 7070 --port 7071 \
    --user model-server --workingdir /home/model-server --cmd '["torchserve", "--help"]' "$CTR"
  phase "torchserve base: commit" buildah commit --quiet --rm "$CTR" "$(base_ref torchserve)"
}

fetch_wheels() {  # fetch_wheels NAME CONTAINER PIP [CONSTRAINTS] : wheels of $WHEELS/.requirements/NAME.txt
  # Resolved by the image's own interpreter and pip (same tags as the install); nothing is fetched when the
  # wheelhouse already holds every wheel the resolution needs. CONSTRAINTS: what the image's venv already has
  # (else `pip download`, which ignores installed packages, fetched a newer torch and its CUDA wheels, ~3 GB
  # that the install then never used). A failed download is retried: completed wheels stay.
  local req=(-r "/mnt/.requirements/$1.txt") attempt
  [[ -n ${4:-} ]] && req+=(-c "$4")
  if buildah run "${BUILD_MOUNTS[@]}" --user 0:0 "$2" -- "$3" download --quiet -d /mnt "${req[@]}" >/dev/null 2>&1; then
    say "$1: every wheel already in the wheelhouse"
    return 0
  fi
  for attempt in 1 2 3; do
    phase "$1: pip download (missing wheels only, attempt $attempt)" \
      buildah run --network host "${FETCH_MOUNTS[@]}" --user 0:0 "$2" -- "$3" download -d /mnt "${req[@]}" && return 0
    sleep $((attempt * 10))
  done
  return 1
}

prefetch() {  # prefetch NAME CONTEXT : the wheels the Dockerfile's pip steps will install, offline
  local req ctr pip
  req="$(find "$2/docker" -name "$1-requirements.txt")"
  [[ -n $req ]] || return 0
  cp "$req" "$WHEELS/.requirements/$1.txt"
  ctr="$(buildah from --quiet --pull-never "$(base_ref "$(base_of "$1")")")"
  CTRS+=("$ctr")
  if [[ $1 == bridge || $1 == kserve-predictor ]]; then  # the Dockerfile's own recipe: a fresh venv, ensurepip's pip
    buildah run --user 0:0 "$ctr" -- python -m venv /tmp/fetch-venv; pip=/tmp/fetch-venv/bin/pip
    fetch_wheels "$1" "$ctr" "$pip"
  else  # the venv the Dockerfile's `python -m pip` installs into, whose packages the install keeps
    pip=/home/venv/bin/pip
    buildah run --user 0:0 "$ctr" -- "$pip" freeze --all --disable-pip-version-check > "$WHEELS/.requirements/$1-installed.txt"
    fetch_wheels "$1" "$ctr" "$pip" "/mnt/.requirements/$1-installed.txt"
  fi
  buildah rm "$ctr" >/dev/null
}

ensure_base() {  # ensure_base python|torchserve : the base image in buildah's storage (built once per recipe)
  if buildah inspect --type image "$(base_ref "$1")" >/dev/null 2>&1; then
    say "$1 base: cached ($(base_ref "$1"))"
  else
    drop_stale "$1"
    "build_${1}_base"
  fi
}

drop_stale() {  # drop_stale python|torchserve|jre : before a base is rebuilt, what its old recipe made
  # Older recipes of the base, and the chart images and archives built on it (their keys include the base's,
  # so they are rebuilt next anyway). Dropped first, not after: a torchserve base build peaks at ~3x its 6 GB
  # (the container, the commit's layer blob, the new layer), on top of the old base and the predictor on it,
  # which filled the disk of a CI machine.
  local name
  for name in "${IMAGES[@]}"; do
    [[ $(base_of "$name") == "$1" ]] || continue
    buildah rmi "$(ref "$name")" >/dev/null 2>&1 || true
    find "$IMAGE_CACHE" -maxdepth 1 -name "$name-*.oci.tar" -delete
  done
  buildah images --format '{{.Name}}:{{.Tag}}' | grep -F "localhost/image-moderation/$1-base:" \
    | grep -vxF "$(base_ref "$1")" | xargs -r buildah rmi >/dev/null 2>&1 || true
  buildah rmi --prune >/dev/null 2>&1 || true  # their untagged leftovers
}

# --- the chart's images ----------------------------------------------------------------------------------

base_arg() {  # base_arg NAME : the Dockerfile's base-image build argument for the local stand-in
  case "$1" in
    bridge) echo "PYTHON_IMAGE=$(base_ref python)" ;;
    predictor) echo "TORCHSERVE_IMAGE=$(base_ref torchserve)" ;;
    kafka) echo "JRE_IMAGE=$(base_ref jre)" ;;
    kserve-predictor) echo "PYTHON_IMAGE=$(base_ref python)" ;;
  esac
}

base_of() { case "$1" in bridge|kserve-predictor) echo python ;; predictor) echo torchserve ;; kafka) echo jre ;; esac; }

image_key() {  # image_key NAME CONTEXT BUILDER
  { echo "$1 $(ref "$1") $3"; tree_hash "$2"; declare -f build_image
    if [[ $3 == buildah ]]; then base_key "$(base_of "$1")"; base_arg "$1"; fi
  } | sha
}

archive_of() { echo "$IMAGE_CACHE/$1-$2.oci.tar"; }  # archive_of NAME KEY

build_image() {  # build_image NAME CONTEXT BUILDER ARCHIVE
  local name="$1" ctx="$2" archive="$4"
  if [[ $3 == docker ]]; then
    phase "$name: docker build" docker build -f "$ctx/docker/$name.Dockerfile" -t "$(ref "$name")" "$ctx"
    phase "$name: docker save" docker save -o "$archive.partial" "$(ref "$name")"
  else
    ensure_base "$(base_of "$name")"
    prefetch "$name" "$ctx"
    phase "$name: buildah bud" "${NICE[@]}" buildah bud --network none "${BUILD_MOUNTS[@]}" --layers=false \
      --build-arg "$(base_arg "$name")" -f "$ctx/docker/$name.Dockerfile" -t "$(ref "$name")" "$ctx"
    rm -f "$archive.partial"
    phase "$name: write OCI archive" buildah push --quiet "$(ref "$name")" \
      "oci-archive:$archive.partial:$(ref "$name")"
  fi
  mv "$archive.partial" "$archive"
}

# The wheelhouse is mounted at /mnt (an empty folder of every base, so the mount adds no path to a layer).
# pip in the build containers reads a mounted /etc/pip.conf (never committed): offline from the wheelhouse for
# every install (BUILD_MOUNTS), and, only to fill the wheelhouse, PyPI with the host's trust store, so pip works
# behind a TLS-intercepting proxy (FETCH_MOUNTS).
pip_mounts() {
  mkdir -p "$WHEELS/.requirements"
  printf '[global]\nno-index = true\nfind-links = /mnt\ndisable-pip-version-check = true\n' > "$IMAGE_CACHE/pip-offline.conf"
  printf '[global]\nfind-links = /mnt\ncert = /etc/ssl/certs/ca-certificates.crt\ndisable-pip-version-check = true\n' \
    > "$IMAGE_CACHE/pip-fetch.conf"
  BUILD_MOUNTS=(-v "$WHEELS:/mnt:ro" -v "$IMAGE_CACHE/pip-offline.conf:/etc/pip.conf:ro")
  FETCH_MOUNTS=(-v "$WHEELS:/mnt" -v "$IMAGE_CACHE/pip-fetch.conf:/etc/pip.conf:ro"
                -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
}

cmd_build() {
  local b name ctx key archive old
  b="$(builder)"
  mkdir -p "$IMAGE_CACHE" "$LOG_DIR"
  if [[ $b == buildah ]]; then
    command -v buildah >/dev/null && command -v debootstrap >/dev/null \
      || { echo "no Docker engine and no buildah/debootstrap: apt-get install buildah debootstrap (docker/README.md)" >&2; exit 1; }
    pip_mounts
  fi
  say "builder: $b; cache: $IMAGE_CACHE"
  for name in "${SELECTED[@]}"; do
    stage_context "$name"; ctx="$CONTEXT"
    key="$(image_key "$name" "$ctx" "$b")"
    archive="$(archive_of "$name" "$key")"
    if [[ -f $archive ]]; then
      say "$name: cached ($(ref "$name"), $(du -h "$archive" | cut -f1))"
      continue
    fi
    old="$(image_id "$b" "$(ref "$name")")"
    build_image "$name" "$ctx" "$b" "$archive"
    find "$IMAGE_CACHE" -maxdepth 1 -name "$name-*.oci.tar" ! -path "$archive" -delete  # older keys
    # The previous build under this name is now untagged: drop it (the predictor weighs several GB).
    if [[ -n $old && $old != "$(image_id "$b" "$(ref "$name")")" ]]; then "$b" rmi "$old" >/dev/null 2>&1 || true; fi
    say "$name: built $(ref "$name") -> $archive ($(du -h "$archive" | cut -f1))"
  done
  say "build: $((SECONDS - T0))s"
}

image_id() {  # image_id BUILDER REF : the local image id of REF, empty when there is none
  if [[ $1 == docker ]]; then docker image inspect --format '{{.Id}}' "$2" 2>/dev/null || true
  else buildah inspect --type image --format '{{.FromImageID}}' "$2" 2>/dev/null || true; fi
}

current_archive() {  # current_archive NAME : sets ARCHIVE, the path for the current sources (may not exist yet)
  stage_context "$1"
  ARCHIVE="$(archive_of "$1" "$(image_key "$1" "$CONTEXT" "$(builder)")")"
}

archive_digest() {  # archive_digest ARCHIVE : manifest digest recorded in the archive's index.json
  tar -xOf "$1" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])' \
    2>/dev/null || echo none
}

cmd_load() {
  local name archive want have
  cmd_build
  [[ -S $CONTAINERD_ADDRESS ]] || { echo "no containerd socket at $CONTAINERD_ADDRESS (CONTAINERD_ADDRESS=…)" >&2; exit 1; }
  for name in "${SELECTED[@]}"; do
    current_archive "$name"; archive="$ARCHIVE"
    want="$(archive_digest "$archive")"
    have="$(ctr -a "$CONTAINERD_ADDRESS" -n k8s.io images ls "name==$(ref "$name")" 2>/dev/null | awk 'NR>1 {print $3}')"
    if [[ -n $have && $have == "$want" ]]; then
      say "$name: already in containerd ($(ref "$name") $want)"
      continue
    fi
    phase "$name: ctr import" ctr -a "$CONTAINERD_ADDRESS" -n k8s.io images import "$archive"
    have="$(ctr -a "$CONTAINERD_ADDRESS" -n k8s.io images ls "name==$(ref "$name")" | awk 'NR>1 {print $3}')"
    [[ -n $have ]] || { echo "$name: the import did not create $(ref "$name")" >&2; exit 1; }
    # A buildah archive names its manifest, which containerd must now hold (a `docker save` archive may
    # name an index instead, so only the buildah case is compared).
    [[ $want == none || $(builder) == docker || $have == "$want" ]] \
      || { echo "$name: containerd has $have as $(ref "$name"), the archive $want" >&2; exit 1; }
  done
  say "load: $((SECONDS - T0))s"
}

BUILD_MOUNTS=()
FETCH_MOUNTS=()
CTR=""
CTRS=()
CONTEXTS=()
CONTEXT=""
ARCHIVE=""
cleanup() {  # build contexts and any buildah container a failed step left behind
  rm -rf "${CONTEXTS[@]}"
  for c in "$CTR" "${CTRS[@]}"; do [[ -z $c ]] || buildah rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
select_images() {  # select_images [NAME...] : sets SELECTED (default: every image)
  local name
  SELECTED=("${@:-${IMAGES[@]}}")
  for name in "${SELECTED[@]}"; do
    [[ " ${IMAGES[*]} " == *" $name "* ]] || { echo "unknown image $name (${IMAGES[*]})" >&2; exit 2; }
  done
}

SELECTED=()
case "${1:-}" in
  build) select_images "${@:2}"; cmd_build
    echo "push: docker push $(ref bridge) && docker push $(ref predictor) (REGISTRY=… for your registry;" \
      "$(ref kafka) is the local cluster's broker, not needed with your own Kafka;" \
      "$(ref kserve-predictor) only for the chart's runtime=kserve)"
    echo "then: --set bridge.image.repository=$PREFIX/bridge,bridge.image.tag=$TAG" \
      "--set predictor.image.repository=$PREFIX/predictor,predictor.image.tag=$TAG" \
      "(runtime=kserve: --set predictor.kserveImage.repository=$PREFIX/kserve-predictor,predictor.kserveImage.tag=$TAG)" ;;
  load) select_images "${@:2}"; cmd_load ;;
  archive) current_archive "${2:?bridge|predictor|kafka|kserve-predictor}"; echo "$ARCHIVE" ;;
  refs) for name in "${IMAGES[@]}"; do ref "$name"; done ;;
  *) echo "usage: $0 build|load|archive NAME|refs" >&2; exit 2 ;;
esac
