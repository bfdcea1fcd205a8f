"""The chart's Dockerfiles: hadolint clean, published bases by default, pins identical to pyproject.toml, and the
bridge and kserve-predictor images carry every project module `python -m bridge` / `python -m kserve_runtime`
imports (the latter without torch). The images built by `make images` (OCI
archives in the image cache, scripts/images.sh) are checked in tests/test_images_built.py."""

from __future__ import annotations

import ast
import contextlib
import re
from pathlib import Path

import pytest

from tests import k8s_support as k

DOCKER = k.ROOT / "docker"


def test_hadolint_clean() -> None:
    res = k.run([k.tool("hadolint"), *map(str, sorted(DOCKER.glob("*.Dockerfile")))])
    assert res.returncode == 0, res.stdout + res.stderr


# The published base of each Dockerfile: the default of its base-image build argument. The local build
# (scripts/images.sh without Docker) overrides only these arguments.
PUBLISHED_BASES = {
    "bridge.Dockerfile": {"PYTHON_IMAGE": "python:3.11.11-slim-bookworm"},
    "predictor.Dockerfile": {"TORCHSERVE_IMAGE": "pytorch/torchserve:0.12.0-cpu"},
    "kafka.Dockerfile": {"JRE_IMAGE": "eclipse-temurin:17.0.13_11-jre-jammy"},
    "kserve-predictor.Dockerfile": {"PYTHON_IMAGE": "python:3.11.11-slim-bookworm"},
}


def test_every_dockerfile_has_a_pinned_published_base() -> None:
    assert {p.name for p in DOCKER.glob("*.Dockerfile")} == set(PUBLISHED_BASES)


@pytest.mark.parametrize("dockerfile", sorted(PUBLISHED_BASES))
def test_base_image_is_a_build_arg_defaulting_to_the_published_base(dockerfile: str) -> None:
    """hadolint cannot check a tag behind `FROM ${ARG}` (DL3006), so this does: every FROM is a declared base
    argument or an earlier stage, and each argument defaults to the pinned published image."""
    lines = (DOCKER / dockerfile).read_text().splitlines()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(lines), re.M))
    assert {a: args.get(a) for a in PUBLISHED_BASES[dockerfile]} == PUBLISHED_BASES[dockerfile]
    stages: set[str] = set()
    for line in lines:
        if m := re.match(r"FROM (\S+)(?: AS (\S+))?$", line):
            base = m.group(1)
            assert base in stages or base.strip("${}") in PUBLISHED_BASES[dockerfile], f"{dockerfile}: FROM {base}"
            stages.add(m.group(2) or base)
    assert stages, f"{dockerfile} has no FROM"


@pytest.mark.parametrize(
    "requirements", ["bridge-requirements.txt", "predictor-requirements.txt", "torchserve-base-requirements.txt",
                     "kserve-predictor-requirements.txt"]
)
def test_image_pins_match_pyproject(requirements: str) -> None:
    pinned = dict(re.findall(r'"([A-Za-z0-9_.\-\[\]]+)==([^"]+)"', (k.ROOT / "pyproject.toml").read_text()))
    for line in (DOCKER / requirements).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            assert pinned.get(name) == version, f"{name}=={version} vs pyproject {pinned.get(name)}"


def _project_imports(module: Path, seen: set[Path]) -> set[Path]:
    """Project files reachable from `module` through imports (bridge.*, handlers.*, kserve_runtime.*)."""
    if module in seen or not module.exists():
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse(module.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in {"bridge", "handlers", "demo", "kserve_runtime"}:
                path = k.ROOT / Path(*name.split("."))
                _project_imports(path.with_suffix(".py") if not path.is_dir() else path / "__init__.py", seen)
    return seen


def _copied(dockerfile: str) -> list[str]:
    """Build-context sources of the Dockerfile's COPY lines (not those copying `--from` a stage)."""
    sources: list[str] = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            sources += [t for t in line.split()[1:-1] if not t.startswith("--")]
    return sources


@pytest.mark.parametrize(("image", "main", "user"), [("bridge", "bridge", "10001:10001"),
                                                      ("kserve-predictor", "kserve_runtime", "1000:1000")])
def test_image_has_every_module_it_imports(image: str, main: str, user: str) -> None:
    """Each file is copied by name or inside a copied folder (a file copied *into* `handlers/` does not bring the
    rest of that folder)."""
    dockerfile = (DOCKER / f"{image}.Dockerfile").read_text()
    sources = _copied(dockerfile)
    needed = _project_imports(k.ROOT / main / "__main__.py", set())
    assert len(needed) > 1, needed
    for path in needed:
        rel = str(path.relative_to(k.ROOT))
        assert rel in sources or any(s.endswith("/") and rel.startswith(s) for s in sources), (
            f"{rel} missing from the {image} image")
    assert "stack.env" in sources  # handlers/stack.py reads it
    assert f"USER {user}" in dockerfile


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_bridge_image_installs_every_package_its_modules_import() -> None:
    """Every third-party package imported by a module of `python -m bridge` (its shared handlers modules included)
    is in docker/bridge-requirements.txt or required by one of those: the image has no other packages."""
    import sys
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires

    imported: dict[str, str] = {}
    for path in _project_imports(k.ROOT / "bridge" / "__main__.py", set()):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in {"bridge", "handlers", "__future__"}:
                    imported[top] = str(path.relative_to(k.ROOT))
    pinned = [line.split("==")[0] for line in (DOCKER / "bridge-requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    installed, todo = set(), [_normalised(n) for n in pinned]
    while todo:  # the pins and what they require (extras left out, other markers ignored: a superset is fine)
        dist = todo.pop()
        if dist in installed:
            continue
        installed.add(dist)
        with contextlib.suppress(PackageNotFoundError):  # a pin not installed here: test_image_pins_match_pyproject
            todo += [_normalised(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in requires(dist) or []
                     if not re.search(r"\bextra\s*==", r)]
    dists = packages_distributions()
    missing = {top: where for top, where in imported.items()
               if not {_normalised(d) for d in dists.get(top, [top])} & installed}
    assert imported and not missing, f"imported by the bridge but not installed in its image: {missing}"


def test_kserve_predictor_image_is_torch_free_and_fits_the_chart_user() -> None:
    """ONNX Runtime on KServe's ModelServer only: no torch/captum (`:explain` and `eager` need the TorchServe
    image), and the image's user is the chart's predictor user (one securityContext for both runtimes)."""
    import yaml

    reqs = (DOCKER / "kserve-predictor-requirements.txt").read_text()
    names = {line.split("==")[0] for line in reqs.splitlines() if line.strip() and not line.startswith("#")}
    assert {"kserve", "onnxruntime", "numpy", "pillow", "pyyaml", "prometheus-client"} <= names
    assert not names & {"torch", "torchvision", "captum", "torchserve"}
    sc = yaml.safe_load((k.CHART / "values.yaml").read_text())["predictor"]["securityContext"]
    dockerfile = (DOCKER / "kserve-predictor.Dockerfile").read_text()
    assert f"USER {sc['runAsUser']}:{sc['runAsGroup']}" in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "kserve_runtime"]' in dockerfile
    assert "KSERVE_WORKDIR=/tmp/" in dockerfile and "EXPOSE 8080 8081" in dockerfile
