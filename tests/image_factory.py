"""Small generated images in every format and mode the handler must accept or refuse (no files in git)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (gradients + noise): compresses like a photo, decodes like one."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    noise = rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(width: int = 320, height: int = 240, seed: int = 0, quality: int = 85) -> bytes:
    return encode(_photo(width, height, seed), "JPEG", quality=quality)


def png(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(_photo(width, height, seed), "PNG")


def accepted_variants() -> dict[str, bytes]:
    """Every input kind the issue lists as accepted, keyed by a readable name."""
    photo = _photo()
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    sixteen = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    frames = [_photo(seed=s).convert("P") for s in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW on display
    return {
        "jpeg": encode(photo, "JPEG", quality=85),
        "jpeg_exif_rotated": encode(photo, "JPEG", exif=exif),
        "png_rgb": encode(photo, "PNG"),
        "png_rgba": encode(rgba, "PNG"),
        "png_grayscale": encode(photo.convert("L"), "PNG"),
        "png_palette": encode(photo.convert("P"), "PNG"),
        "png_16bit": encode(sixteen, "PNG"),
        "jpeg_cmyk": encode(photo.convert("CMYK"), "JPEG"),
        "webp": encode(photo, "WEBP"),
        "bmp": encode(photo, "BMP"),
        "tiff": encode(photo, "TIFF"),
        "gif_animated": gif.getvalue(),
    }


def png_bomb(side: int = 12000) -> bytes:
    """A valid side x side 1-bit PNG of a few kB that would need ~side^2 bytes (144 MB) once decoded.

    Written chunk by chunk so building it costs nothing: the IDAT holds side rows of zero bits.
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def refused_variants() -> dict[str, tuple[bytes, str]]:
    """Bad inputs -> (payload, expected error reason). Over-size bytes are built by the tests (cap-dependent)."""
    good = jpeg()
    return {
        "empty": (b"", "empty"),
        "not_an_image": (b"this is definitely not an image" * 10, "not_an_image"),
        "truncated_jpeg": (good[: len(good) // 2], "truncated"),
        "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9"/>', "not_an_image"),
        "html": (b"<!DOCTYPE html><html><body><img src=x></body></html>", "not_an_image"),
        "png_bomb": (png_bomb(), "too_many_pixels"),
    }
