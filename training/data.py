"""Datasets in the class-folder layout, with reproducible train/val/test splits.

Three ways to split, in order of preference: a `manifest.csv` with a `split` column (the shared data set
keeps near-duplicates in one split), explicit `train/ val/ test/` folders, or a seeded split stratified
by (class, subclass) so every subclass is represented in every split.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from handlers.registry import CATEGORIES, LABELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into handlers.registry.LABELS
    subclass: str
    split: str
    source: str = ""  # manifest `source_repo`: where the photo came from, for source-held-out calibration


@dataclass(frozen=True)
class ClassMap:
    """Which top-level folders are harmful and which benign (configurable, e.g. `weapons,violence`)."""

    harmful: tuple[str, ...] = ("harmful",)
    benign: tuple[str, ...] = ("benign",)

    def label_of(self, folder: str) -> int | None:
        if folder in self.harmful:
            return LABELS.index("harmful")
        if folder in self.benign:
            return LABELS.index("benign")
        return None


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _subclass(path: Path, class_dir: Path) -> str:
    rel = path.relative_to(class_dir).parts
    return rel[0] if len(rel) > 1 else class_dir.name


def stratified_split(keys: list[str], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Split names per item; each key group (e.g. "harmful/knife") is split by `fractions` on its own."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    out = [""] * len(keys)
    rng = random.Random(seed)
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        n = len(idx)
        n_val = round(n * fractions[1])
        n_test = round(n * fractions[2])
        if n >= 3:  # keep every subclass present in val and test when it can be
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        for j, i in enumerate(idx):
            out[i] = "val" if j < n_val else "test" if j < n_val + n_test else "train"
    return out


def _from_manifest(root: Path, classes: ClassMap) -> list[Sample]:
    samples = []
    with (root / "manifest.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            label = classes.label_of(row["label"])
            if label is not None and row["split"] in SPLITS:
                samples.append(Sample(root / row["path"], label, row["subclass"], row["split"],
                                      row.get("source_repo") or ""))
    return samples


def _from_folders(root: Path, classes: ClassMap, split: str | None) -> list[Sample]:
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = classes.label_of(class_dir.name)
        if label is None:
            continue
        for path in _images(class_dir):
            samples.append(Sample(path, label, _subclass(path, class_dir), split or ""))
    return samples


def load_dataset(
    root: str | Path,
    classes: ClassMap = ClassMap(),
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    use_manifest: bool = True,
) -> list[Sample]:
    """All labelled images under `root` with their split."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"DATA={root} is not a directory")
    if use_manifest and (root / "manifest.csv").exists():
        samples = _from_manifest(root, classes)
    elif all((root / s).is_dir() for s in SPLITS):
        samples = [s for split in SPLITS for s in _from_folders(root / split, classes, split)]
    else:
        samples = _from_folders(root, classes, None)
        keys = [f"{LABELS[s.label]}/{s.subclass}" for s in samples]
        splits = stratified_split(keys, fractions, seed)
        samples = [Sample(s.path, s.label, s.subclass, sp) for s, sp in zip(samples, splits, strict=True)]
    if not samples:
        raise SystemExit(f"no images under {root} in class folders {classes.harmful + classes.benign}")
    return samples


def by_split(samples: Iterable[Sample], split: str) -> list[Sample]:
    return [s for s in samples if s.split == split]


# Which harmful category (handlers.model_io.CATEGORIES) each harmful subclass of ../shared/data shows; the
# category head is trained on these. A harmful subclass not listed has unknown categories (masked in the loss).
SUBCLASS_CATEGORIES: dict[str, str] = {
    "gun_openimages": "firearm", "pistol_granada": "firearm", "harmful_revolver": "firearm",
    "harmful_cannon": "firearm", "long_gun": "firearm",
    "knife": "blade", "blade": "blade",
    "violence": "violence", "violence_staged": "violence",
    "fire": "fire_smoke", "smoke_plume": "fire_smoke",
}
assert set(SUBCLASS_CATEGORIES.values()) == set(CATEGORIES), "every category needs training subclasses"


def category_targets(sample: Sample) -> tuple[list[float], bool]:
    """Multi-hot category targets and whether they are known: benign images show none of the categories; a
    harmful image's come from its subclass (unknown for subclasses outside SUBCLASS_CATEGORIES)."""
    if sample.label != LABELS.index("harmful"):
        return [0.0] * len(CATEGORIES), True
    category = SUBCLASS_CATEGORIES.get(sample.subclass)
    return [float(c == category) for c in CATEGORIES], category is not None


def subclass_group(subclass: str) -> str:
    """Report/weighting groups: the 88 Caltech categories, 101 foods and 7 hard negatives each count as one."""
    for prefix in ("caltech_", "food/", "hard_negative_"):
        if subclass.startswith(prefix):
            return prefix.rstrip("_/")
    return subclass
