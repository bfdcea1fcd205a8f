"""A tiny benign set of everyday photos from sources the training data never saw (false-alarm check).

    python -m training.unseen --out .cache/unseen && make evaluate MODEL=... DATA=.cache/unseen OUT=...

The photos ship inside pinned dependencies (scikit-image, matplotlib, scikit-learn sample images), so the
check works offline and is reproducible. All are benign: people, objects, a cat and scenes. Nine photos
cannot measure accuracy, but a model that learned "person means harmful" shows up here at once.
"""

from __future__ import annotations

import argparse
import shutil
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from handlers.imaging import DecodeLimits, decode_image
from handlers.model_io import harmful_probability
from handlers.registry import eval_transform

# (package, path inside the package) -> benign subclass
PHOTOS: dict[tuple[str, str], str] = {
    ("skimage", "data/astronaut.png"): "people",
    ("skimage", "data/camera.png"): "people",
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"): "people",
    ("skimage", "data/coffee.png"): "objects",
    ("skimage", "data/coins.png"): "objects",
    ("skimage", "data/motorcycle_left.png"): "objects",
    ("skimage", "data/chelsea.png"): "animals",
    ("sklearn", "datasets/images/china.jpg"): "scenes",
    ("sklearn", "datasets/images/flower.jpg"): "scenes",
}


def package_dir(name: str) -> Path:
    found = find_spec(name)
    if found is None or found.origin is None:
        raise SystemExit(f"{name} is not installed (it is a pinned dependency: run `make setup`)")
    return Path(found.origin).parent


def build(out: Path) -> list[Path]:
    """Copy the photos into `out/benign/<subclass>/` (the class-folder layout `evaluate` reads)."""
    written = []
    for (package, rel), subclass in PHOTOS.items():
        src = package_dir(package) / rel
        dest = out / "benign" / subclass / f"{package}_{Path(rel).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".cache/unseen"))
    args = p.parse_args(argv)
    print(f"{len(build(args.out))} benign photos from pinned packages in {args.out}")


if __name__ == "__main__":
    main()


@torch.inference_mode()
def score_photos(model: nn.Module, out: Path) -> list[tuple[str, str, float]]:
    """(photo, subclass, P(harmful)) for every photo, decoded and preprocessed exactly like the server does."""
    model.eval()
    rows = []
    for path in build(out):
        image = decode_image(path.read_bytes(), DecodeLimits())
        p = float(harmful_probability(model(eval_transform()(image).unsqueeze(0)).numpy())[0])
        rows.append((path.name, path.parent.name, p))
    return rows


def photo_table(rows: list[tuple[str, str, float]], threshold: float) -> str:
    lines = ["| photo | subclass | P(harmful) | flagged |", "|---|---|---|---|"]
    lines += [f"| {name} | {sub} | {p:.3f} | {'**yes**' if p >= threshold else 'no'} |" for name, sub, p in rows]
    return "\n".join(lines)
