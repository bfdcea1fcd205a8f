"""Tiny generated class-folder data sets for the training tests (no real images in git)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {("harmful", "fire"): (220, 60, 30), ("harmful", "knife"): (200, 90, 90),
           ("benign", "sky"): (40, 90, 220), ("benign", "grass"): (50, 200, 60)}


def make_dataset(root: Path, per_subclass: int = 6, corrupt: bool = True) -> Path:
    """harmful/{fire,knife} reddish, benign/{sky,grass} bluish/greenish noisy images, plus one corrupt file."""
    rng = np.random.default_rng(0)
    for (label, sub), colour in COLOURS.items():
        folder = root / label / sub
        folder.mkdir(parents=True)
        for i in range(per_subclass):
            pixels = np.clip(rng.normal(colour, 25, size=(48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    if corrupt:
        (root / "benign" / "sky" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root
