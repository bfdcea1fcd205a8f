"""Image bytes -> RGB PIL image, defensively: caps checked before pixels are decoded.

Every failure is a `ModerationError` naming the problem, so one bad upload fails alone.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.env import Defaults, reader
from handlers.errors import ModerationError
from handlers.model_io import IMAGE_SIZE

# We enforce our own pixel cap before decoding; Pillow's bomb check would only warn or raise later.
Image.MAX_IMAGE_PIXELS = None

# The per-image caps every serving process enforces (README "Per-model settings"), read like every scope's table.
LIMIT_DEFAULTS: Defaults = {
    "MODERATION_MAX_IMAGE_BYTES": (str(20 * 1024 * 1024), "per-image byte cap (20 MB)"),
    "MODERATION_MAX_PIXELS": ("40000000", "per-image pixel cap (40 MP), checked before the pixels are decoded"),
}


@dataclass(frozen=True)
class DecodeLimits:
    """Per-image caps (env: MODERATION_MAX_IMAGE_BYTES, MODERATION_MAX_PIXELS)."""

    max_bytes: int = int(LIMIT_DEFAULTS["MODERATION_MAX_IMAGE_BYTES"][0])
    max_pixels: int = int(LIMIT_DEFAULTS["MODERATION_MAX_PIXELS"][0])
    fast_jpeg: bool = True  # decode JPEGs at reduced size with libjpeg's DCT scaler

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, fast_jpeg: bool = True) -> DecodeLimits:
        """The caps from `environ` (default os.environ): the same mapping a scorer's settings were read from."""
        e = reader(environ, LIMIT_DEFAULTS)
        return cls(max_bytes=int(e("MODERATION_MAX_IMAGE_BYTES")), max_pixels=int(e("MODERATION_MAX_PIXELS")),
                   fast_jpeg=fast_jpeg)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha is composited on white, 16/32-bit gray is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Decode one upload into an RGB image, refusing empty, oversized, markup and broken inputs."""
    if not data:
        raise ModerationError("empty", "empty image payload")
    if len(data) > limits.max_bytes:
        raise ModerationError("too_large", f"image is {len(data)} bytes, over the {limits.max_bytes}-byte cap")
    if data[:64].lstrip().startswith(b"<"):  # SVG/HTML/XML; no raster format starts with "<"
        raise ModerationError("not_an_image", "payload is markup (SVG/HTML/XML), not a raster image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise ModerationError("not_an_image", "payload is not a recognised image format") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's bad payload
        raise ModerationError("not_an_image", f"cannot parse image header: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ModerationError("not_an_image", f"invalid image dimensions {width}x{height}")
    if width * height > limits.max_pixels:
        raise ModerationError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels, over the {limits.max_pixels}-pixel cap",
        )
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        if limits.fast_jpeg and img.format == "JPEG":
            img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img)
    except ModerationError:
        raise
    except OSError as exc:
        if "truncated" in str(exc).lower() or "premature" in str(exc).lower():
            raise ModerationError("truncated", f"image data is truncated: {exc}") from None
        raise ModerationError("not_an_image", f"cannot decode image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - corrupt streams surface as many exception types
        raise ModerationError("not_an_image", f"cannot decode image: {exc}") from None
