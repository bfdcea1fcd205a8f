"""Fetch a balanced Open Images V7 subset in the training layout (`harmful/<class>/`, `benign/<class>/`).

    python -m training.openimages --out data/openimages [--per-class 500] [--base-url URL]

Reads the official CSVs (class descriptions, human-verified image-level labels, image metadata with
URLs and licences), keeps positively verified images of the reference classes, caps each class,
balances harmful against benign, downloads the 300K thumbnails (original URL as fall-back) and writes
`ATTRIBUTION.csv` (licence, author, source page per image). Re-running skips what is already there.
Open Images annotations are CC BY 4.0; each image keeps the licence listed in ATTRIBUTION.csv.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

DEFAULT_BASE_URL = "https://storage.googleapis.com/openimages"
# Paths of the official files, relative to the base URL.
CLASS_DESCRIPTIONS = "v7/oidv7-class-descriptions.csv"
IMAGE_LABELS = "v7/oidv7-{split}-annotations-human-imagelabels.csv"
IMAGE_INFO = "v6/oidv6-{split}-images-with-labels-with-rotation.csv"
# The reference system's classes (Open Images display names).
HARMFUL = ("Handgun", "Rifle", "Shotgun", "Weapon", "Knife", "Dagger", "Sword", "Explosion", "Tank")
BENIGN = ("Person", "Dog", "Cat", "Tree", "Car", "Building", "Food", "Flower", "Bicycle", "Chair")


def _lines(url: str, timeout: float) -> Iterator[str]:
    """Stream a (possibly multi-GB) CSV line by line."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - configured https/http source
        yield from io.TextIOWrapper(response, encoding="utf-8", newline="")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def class_ids(base: str, names: tuple[str, ...], timeout: float) -> dict[str, str]:
    """Display name -> Open Images label id (e.g. Handgun -> /m/0gxl3)."""
    wanted = set(names)
    found = {row["DisplayName"]: row["LabelName"] for row in csv.DictReader(_lines(f"{base}/{CLASS_DESCRIPTIONS}",
                                                                                      timeout))
             if row["DisplayName"] in wanted}
    missing = wanted - set(found)
    if missing:
        print(f"classes not in Open Images, skipped: {', '.join(sorted(missing))}")
    return found


def pick_images(base: str, split: str, labels: dict[str, str], per_class: int, timeout: float) -> dict[str, list[str]]:
    """Class name -> up to `per_class` image ids verified positive (Confidence 1); an image goes to one class."""
    by_id = {v: k for k, v in labels.items()}
    chosen: dict[str, list[str]] = defaultdict(list)
    taken: set[str] = set()
    for row in csv.DictReader(_lines(f"{base}/{IMAGE_LABELS.format(split=split)}", timeout)):
        name = by_id.get(row["LabelName"])
        if name and row["Confidence"] in ("1", "1.0") and row["ImageID"] not in taken and len(chosen[name]) < per_class:
            chosen[name].append(row["ImageID"])
            taken.add(row["ImageID"])
        if len(chosen) == len(labels) and all(len(v) >= per_class for v in chosen.values()):
            break
    return chosen


def balance(harmful: dict[str, list[str]], benign: dict[str, list[str]]) -> dict[str, list[str]]:
    """Trim benign classes round-robin so benign images total no more than harmful ones."""
    budget = sum(len(v) for v in harmful.values())
    kept: dict[str, list[str]] = {k: [] for k in benign}
    queues = {k: list(v) for k, v in benign.items()}
    while budget > 0 and any(queues.values()):
        for k in list(queues):
            if queues[k] and budget > 0:
                kept[k].append(queues[k].pop(0))
                budget -= 1
    return kept


def image_info(base: str, split: str, ids: set[str], timeout: float) -> dict[str, dict[str, str]]:
    info = {}
    for row in csv.DictReader(_lines(f"{base}/{IMAGE_INFO.format(split=split)}", timeout)):
        if row["ImageID"] in ids:
            info[row["ImageID"]] = row
            if len(info) == len(ids):
                break
    return info


def download(url: str, dest: Path, timeout: float) -> bool:
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310
            tmp.write_bytes(r.read())
        tmp.rename(dest)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)
    p.add_argument("--split", default="train", choices=("train", "validation", "test"))
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    base = args.base_url.rstrip("/")
    ids = class_ids(base, HARMFUL + BENIGN, args.timeout)
    harmful = pick_images(base, args.split, {k: v for k, v in ids.items() if k in HARMFUL}, args.per_class,
                          args.timeout)
    benign = balance(harmful, pick_images(base, args.split, {k: v for k, v in ids.items() if k in BENIGN},
                                          args.per_class, args.timeout))
    plan = [("harmful", c, i) for c, v in harmful.items() for i in v] + [("benign", c, i) for c, v in benign.items()
                                                                         for i in v]
    info = image_info(base, args.split, {i for _, _, i in plan}, args.timeout)
    attribution = args.out / "ATTRIBUTION.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["path", "label", "class", "ImageID", "License", "Author", "OriginalLandingURL", "OriginalURL"]
    rows, failed = [], 0
    for label, cls, image_id in tqdm(plan, desc="images", unit="img"):
        meta = info.get(image_id)
        if meta is None:
            failed += 1
            continue
        dest = args.out / label / slug(cls) / f"{image_id}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            urls = [u for u in (meta.get("Thumbnail300KURL"), meta.get("OriginalURL")) if u]
            if not any(download(u, dest, args.timeout) for u in urls):
                failed += 1
                continue
        rows.append({"path": str(dest.relative_to(args.out)), "label": label, "class": cls, "ImageID": image_id,
                     **{k: meta.get(k, "") for k in fields[4:]}})
    with attribution.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    counts = defaultdict(int)
    for r in rows:
        counts[r["label"]] += 1
    print(f"{len(rows)} images in {args.out} (harmful {counts['harmful']}, benign {counts['benign']}; "
          f"{failed} unavailable); attribution in {attribution}")


if __name__ == "__main__":
    main()
