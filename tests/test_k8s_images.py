"""The chart's Dockerfiles: hadolint clean, pins identical to pyproject.toml, and the bridge image carries every
project module `python -m bridge` imports (Docker itself is not available offline, so the build is not run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests import k8s_support as k

DOCKER = k.ROOT / "docker"


def test_hadolint_clean() -> None:
    res = k.run([k.tool("hadolint"), *map(str, sorted(DOCKER.glob("*.Dockerfile")))])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("requirements", ["bridge-requirements.txt", "predictor-requirements.txt"])
def test_image_pins_match_pyproject(requirements: str) -> None:
    pinned = dict(re.findall(r'"([A-Za-z0-9_.\-\[\]]+)==([^"]+)"', (k.ROOT / "pyproject.toml").read_text()))
    for line in (DOCKER / requirements).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            assert pinned.get(name) == version, f"{name}=={version} vs pyproject {pinned.get(name)}"


def _project_imports(module: Path, seen: set[Path]) -> set[Path]:
    """Project files reachable from `module` through imports (bridge.*, handlers.*)."""
    if module in seen or not module.exists():
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse(module.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in {"bridge", "handlers", "demo"}:
                path = k.ROOT / Path(*name.split("."))
                _project_imports(path.with_suffix(".py") if not path.is_dir() else path / "__init__.py", seen)
    return seen


def test_bridge_image_has_every_module_it_imports() -> None:
    dockerfile = (DOCKER / "bridge.Dockerfile").read_text()
    copied = " ".join(line for line in dockerfile.splitlines() if line.startswith("COPY") and "--from" not in line)
    needed = _project_imports(k.ROOT / "bridge" / "__main__.py", set())
    for path in needed:
        rel = path.relative_to(k.ROOT)
        assert str(rel) in copied or f"{rel.parts[0]}/" in copied.split(), f"{rel} missing from the bridge image"
    assert "USER 10001:10001" in dockerfile
