"""The images `make images` built, read from their OCI archives (scripts/images.sh keeps them in IMAGE_CACHE,
default ~/.cache/image-moderation/images): the configuration the chart relies on (non-root user, entrypoint,
command, PATH), compared with the Dockerfiles and the chart, and, where buildah is installed, the image run as
that user. Each test is skipped only when its archive has not been built for the current sources (or buildah/runc
are missing), unless IMAGES_REQUIRED=1 (`make images-check`, which CI runs once the images are built): then it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import k8s_support as k

SCRIPT = k.ROOT / "scripts" / "images.sh"
DOCKER = k.ROOT / "docker"


def _chart_user(component: str) -> str:
    """uid:gid the chart's container securityContext runs the component as (values.yaml)."""
    sc = yaml.safe_load((k.CHART / "values.yaml").read_text())[component]["securityContext"]
    return f"{sc['runAsUser']}:{sc['runAsGroup']}"


# The image's USER must be the chart's user: a volume's fsGroup, file ownership and `runAsNonRoot` line up.
USERS = {name: _chart_user(name) for name in ("bridge", "predictor")}
USERS["kserve-predictor"] = USERS["predictor"]  # runtime=kserve runs with the same predictor securityContext


def _missing(reason: str) -> None:
    """Skip for want of a built image or tool; with IMAGES_REQUIRED=1 that is a failure (nothing checked)."""
    if os.environ.get("IMAGES_REQUIRED") == "1":
        pytest.fail(f"{reason} (IMAGES_REQUIRED=1)")
    pytest.skip(reason)


def archive(name: str) -> Path:
    res = k.run([str(SCRIPT), "archive", name])
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip().splitlines()[-1])
    if not path.is_file():
        _missing(f"{name} image not built for the current sources ({path.name}): run `make images`")
    return path


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile("blobs/" + digest.replace(":", "/"))
    assert member is not None, digest
    return member.read()


def image(name: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(manifest, config) of the archive's single image."""
    path = archive(name)
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
        manifest = json.loads(_blob(tar, index["manifests"][0]["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
    return manifest, config, path


def layer_names(path: Path, digest: str) -> set[str]:
    with tarfile.open(path) as tar:
        member = tar.extractfile("blobs/" + digest.replace(":", "/"))
        assert member is not None
        with tarfile.open(fileobj=member, mode="r:*") as layer:
            return {n.removeprefix("./") for n in layer.getnames()}


def dockerfile_json(name: str, instruction: str) -> list[str] | None:
    """The exec-form argument list of the Dockerfile's last ENTRYPOINT/CMD, as the image must carry it."""
    found = re.findall(rf"^{instruction} (\[.*\])$", (DOCKER / f"{name}.Dockerfile").read_text(), re.M)
    return json.loads(found[-1]) if found else None


def env(config: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in config["config"].get("Env", []))


def test_bridge_image_config() -> None:
    _, config, _ = image("bridge")
    c = config["config"]
    assert c["User"] == USERS["bridge"]
    assert c["Entrypoint"] == dockerfile_json("bridge", "ENTRYPOINT") == ["python", "-m", "bridge"]
    assert not c.get("Cmd")
    assert c["WorkingDir"] == "/app"
    assert "8090/tcp" in c.get("ExposedPorts", {})
    e = env(config)
    assert e["PATH"].startswith("/opt/venv/bin:")
    assert e["PYTHONUNBUFFERED"] == "1" and e["BRIDGE_HOST"] == "0.0.0.0"


def test_bridge_image_layers_hold_the_app_without_caches() -> None:
    manifest, _, path = image("bridge")
    names: set[str] = set()
    for layer in manifest["layers"]:
        names |= layer_names(path, layer["digest"])
    assert {"app/bridge/__main__.py", "app/handlers/stack.py", "app/stack.env"} <= names
    assert not [n for n in names if n.startswith("app/") and ("__pycache__" in n or n.endswith(".pyc"))]
    assert any(re.match(r"opt/venv/lib/python3\.11/site-packages/confluent_kafka/__init__\.py$", n) for n in names)
    assert not [n for n in names if n.startswith(("root/.cache/pip/", "mnt/")) or n == "etc/pip.conf"]


def test_predictor_image_config_matches_the_chart() -> None:
    _, config, _ = image("predictor")
    c = config["config"]
    assert c["User"] == USERS["predictor"]
    init = ["python", "/opt/image-moderation/torchserve_init.py"]  # TorchServe's launcher, SIGTERM passed on
    assert c["Entrypoint"] == dockerfile_json("predictor", "ENTRYPOINT") == init
    assert c["Cmd"] == dockerfile_json("predictor", "CMD")
    # The ServingRuntime runs the same launcher with the image's own arguments: PATH must find the venv's python.
    runtime = (k.CHART / "templates" / "servingruntime.yaml").read_text()
    block = runtime[runtime.index(f"command: [{', '.join(init)}]") :]
    args = yaml.safe_load(block[block.index("args:") : block.index("env:")])["args"]
    assert args == c["Cmd"]
    assert "/home/venv/bin" in env(config)["PATH"].split(":")


def test_predictor_top_layer_adds_onnxruntime_to_the_venv() -> None:
    manifest, _, path = image("predictor")
    names = layer_names(path, manifest["layers"][-1]["digest"])
    assert any(re.match(r"home/venv/lib/python3\.\d+/site-packages/onnxruntime/__init__\.py$", n) for n in names)
    # Nothing of the build's mounts (pip cache, wheelhouse at /mnt, pip.conf) or inputs is left in the layer.
    leftovers = {"tmp/requirements.txt", "etc/pip.conf"}
    assert not [n for n in names if n.startswith(("root/.cache/pip/", "mnt/")) or n in leftovers]


def _buildah_run(name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run CMD in a container of the built image (runc, as the cluster runs it), as the image's user, offline."""
    if shutil.which("buildah") is None:
        _missing("buildah is not installed (the archive was built elsewhere)")
    # runc by name: buildah prefers crun when both are installed (Debian's buildah depends on crun | runc),
    # and crun refuses this host's hybrid cgroup layout; runc is also what the cluster's containerd runs.
    runc = shutil.which("runc")
    if runc is None:
        _missing("runc is not installed (make cluster-up installs it)")
    manifest, config, path = image(name)
    # The image built here is in buildah's storage already; otherwise read the archive (which takes over the
    # name, so the image it displaces is removed afterwards, as scripts/images.sh does after a rebuild).
    (ref,) = [r for r in k.run([str(SCRIPT), "refs"]).stdout.split() if r.rsplit("/", 1)[-1].split(":")[0] == name]
    ids = [
        i.removeprefix("sha256:")
        for i in k.run(["buildah", "images", "--no-trunc", "--format", "{{.ID}}", ref]).stdout.split()
    ]
    source = ref if manifest["config"]["digest"].removeprefix("sha256:") in ids else f"oci-archive:{path}"
    displaced = ids if source != ref else []
    created = k.run(["buildah", "from", "--quiet", "--pull-never", source])
    assert created.returncode == 0, created.stderr
    ctr = created.stdout.strip().splitlines()[-1]
    try:
        return k.run(
            [
                "buildah",
                "run",
                "--isolation",
                "oci",
                "--runtime",
                runc,
                "--network",
                "none",
                "--user",
                config["config"]["User"],
                ctr,
                "--",
                *cmd,
            ],
            timeout=600,
        )
    finally:
        k.run(["buildah", "rm", ctr])
        listing = k.run(["buildah", "images", "-a", "--no-trunc", "--format", "{{.ID}} {{.Name}}"]).stdout.splitlines()
        dangling = {line.split()[0].removeprefix("sha256:") for line in listing if line.split()[1:] == ["<none>"]}
        for old in set(displaced) & dangling:
            k.run(["buildah", "rmi", old])


def test_bridge_image_runs_as_its_user() -> None:
    res = _buildah_run(
        "bridge", "python", "-c", "import os, bridge.app, bridge.config, handlers.stack; print(os.getuid())"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split()[-1] == USERS["bridge"].split(":")[0]


def test_predictor_image_runs_torchserve_and_the_onnx_backend() -> None:
    res = _buildah_run(
        "predictor",
        "sh",
        "-c",
        "id -u && torchserve --help >/dev/null && java -version 2>&1 | head -1"
        " && python -c 'import onnxruntime, ts, torch, torchvision; print(onnxruntime.__version__, torch.__version__)'",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    uid, java, versions = res.stdout.strip().splitlines()[-3:]
    assert uid == USERS["predictor"].split(":")[0]
    assert " 17." in java or '"17' in java, java
    pins = dict(re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', (k.ROOT / "pyproject.toml").read_text()))
    onnxruntime, torch = versions.split()
    assert onnxruntime == pins["onnxruntime"]
    # The local stand-in base carries the pinned torch (PyPI's +cu build); the published base its own +cpu build.
    assert torch.split("+")[0] == pins["torch"] or torch.endswith("+cpu"), torch


def test_kserve_predictor_image_config_matches_the_chart() -> None:
    _, config, _ = image("kserve-predictor")
    c = config["config"]
    assert c["User"] == USERS["kserve-predictor"]
    assert c["Entrypoint"] == dockerfile_json("kserve-predictor", "ENTRYPOINT") == ["python", "-m", "kserve_runtime"]
    assert {"8080/tcp", "8081/tcp"} <= set(c.get("ExposedPorts", {}))
    e = env(config)
    assert e["PATH"].startswith("/opt/venv/bin:") and e["KSERVE_HOST"] == "0.0.0.0"
    assert e["KSERVE_WORKDIR"].startswith("/tmp/")  # the chart's only writable path


def test_kserve_predictor_image_runs_the_runtime_without_torch() -> None:
    res = _buildah_run(
        "kserve-predictor",
        "sh",
        "-c",
        "id -u && python -c 'import kserve_runtime.server, kserve_runtime.model, onnxruntime as o;print(o.__version__)'"
        " && ! python -c 'import torch' 2>/dev/null && ! python -c 'import captum' 2>/dev/null && echo torch-free",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    uid, onnxruntime, torch_free = res.stdout.strip().splitlines()[-3:]
    assert uid == USERS["kserve-predictor"].split(":")[0] and torch_free == "torch-free"
    pins = dict(re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', (k.ROOT / "pyproject.toml").read_text()))
    assert onnxruntime == pins["onnxruntime"]
