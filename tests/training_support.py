"""Tiny generated class-folder data sets for the training tests (no real images in git)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {("harmful", "fire"): (220, 60, 30), ("harmful", "knife"): (200, 90, 90),
           ("benign", "sky"): (40, 90, 220), ("benign", "grass"): (50, 200, 60)}


def make_dataset(root: Path, per_subclass: int = 6, corrupt: bool = True, manifest: bool = False) -> Path:
    """harmful/{fire,knife} reddish, benign/{sky,grass} bluish/greenish noisy images, plus one corrupt file.
    With `manifest`, a manifest.csv like ../shared/data's: split by index (last two val, test), and two
    sources per subclass (`source_repo` "<subclass>-a"/"-b"), so source folds have something to hold out."""
    rng = np.random.default_rng(0)
    rows = ["path,label,subclass,split,source_repo,source_commit,source_path"]
    for (label, sub), colour in COLOURS.items():
        folder = root / label / sub
        folder.mkdir(parents=True)
        for i in range(per_subclass):
            pixels = np.clip(rng.normal(colour, 25, size=(48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
            split = "test" if i == per_subclass - 1 else "val" if i == per_subclass - 2 else "train"
            rows.append(f"{label}/{sub}/{i}.jpg,{label},{sub},{split},{sub}-{'ab'[i % 2]},0,{i}.jpg")
    if corrupt:
        (root / "benign" / "sky" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    if manifest:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root
