"""Default photos for the demo, tests and load tests, available on a fresh offline clone.

scikit-image's wheel ships a handful of real photographs (astronaut, cat, coffee, rocket, ...); we read
them from the installed package instead of copying third-party images into the repository.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
# Photographs (not charts, textures or test patterns) among scikit-image's bundled data files.
SKIMAGE_PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg",
    "motorcycle_left.png", "rocket.jpg", "retina.jpg", "moon.png", "no_time_for_that_tiny.gif",
)


def skimage_photos() -> list[Path]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [root / name for name in SKIMAGE_PHOTOS if (root / name).exists()]


def images_in(folder: str | Path | None) -> list[Path]:
    """Every image file under `folder` (recursively), or the bundled sample photos when it is None."""
    if folder is None or str(folder) == "":
        return skimage_photos()
    root = Path(folder)
    if not root.is_dir():
        raise SystemExit(f"IMAGES={folder} is not a directory")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise SystemExit(f"no image files under {folder}")
    return found
