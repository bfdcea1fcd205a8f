"""Read the TorchServe `.mar` archives `make models` builds, so both runtimes serve the same inputs.

A `.mar` is a zip: MAR-INF/MANIFEST.json (name, version, config file), the graph(s) and checkpoint, the model
config (TorchServe's batching keys plus our `handler:` section) and provenance.json. Unpacked once at start.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Archive:
    """One unpacked model archive."""

    name: str
    version: str
    model_dir: Path
    config: dict[str, Any]  # the whole model config (batchSize, maxBatchDelay, minWorkers, handler: ...)

    @property
    def handler_config(self) -> dict[str, Any]:
        return dict(self.config.get("handler") or {})


def unpack(mar: Path, workdir: Path) -> Archive:
    """Extract `mar` into workdir/<name> and read its manifest and config."""
    with zipfile.ZipFile(mar) as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
        target = workdir / manifest["modelName"]
        target.mkdir(parents=True, exist_ok=True)
        members = [m for m in zf.namelist() if not m.endswith(".py")]  # code comes from this image, not the archive
        zf.extractall(target, members)
    config_file = manifest.get("configFile")
    config = yaml.safe_load((target / config_file).read_text()) if config_file else {}
    return Archive(manifest["modelName"], str(manifest.get("modelVersion", "1.0")), target, config or {})


def archives_in(store: Path, workdir: Path, names: list[str] | None = None) -> list[Archive]:
    """Every `.mar` of a model store (or only `names`), unpacked; fails if none or a named one is missing."""
    found = {p.stem: p for p in sorted(store.glob("*.mar"))}
    wanted = names or sorted(found)
    missing = [n for n in wanted if n not in found]
    if not found or missing:
        raise SystemExit(f"no archive for {missing or 'any model'} in {store}: run `make models`")
    return [unpack(found[n], workdir) for n in wanted]
