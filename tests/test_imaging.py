"""Decoding: every accepted format/mode becomes RGB; every bad payload is a typed, cheap refusal."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from handlers.errors import ModerationError
from handlers.imaging import DecodeLimits, decode_image
from handlers.registry import eval_transform
from tests.image_factory import accepted_variants, encode, jpeg, png_bomb, refused_variants

LIMITS = DecodeLimits()


@pytest.mark.parametrize("name", sorted(accepted_variants()))
def test_accepted_inputs_decode_to_rgb_and_model_tensor(name: str) -> None:
    image = decode_image(accepted_variants()[name], LIMITS)
    assert image.mode == "RGB"
    tensor = eval_transform()(image)
    assert tuple(tensor.shape) == (3, 224, 224)
    assert tensor.isfinite().all()


@pytest.mark.parametrize("name", sorted(refused_variants()))
def test_refused_inputs_raise_typed_error(name: str) -> None:
    payload, reason = refused_variants()[name]
    with pytest.raises(ModerationError) as info:
        decode_image(payload, LIMITS)
    assert info.value.reason == reason
    assert info.value.status in (400, 413)
    assert info.value.message


def test_exif_orientation_is_applied() -> None:
    photo = Image.new("RGB", (300, 100), (200, 0, 0))
    exif = photo.getexif()
    exif[0x0112] = 6
    assert decode_image(encode(photo, "JPEG", exif=exif), LIMITS).size == (100, 300)


def test_alpha_is_composited_on_white() -> None:
    transparent = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert decode_image(encode(transparent, "PNG"), LIMITS).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_rescaled_not_clipped() -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520
    rgb = np.asarray(decode_image(encode(Image.fromarray(ramp), "PNG"), LIMITS))
    assert rgb.min() == 0 and rgb.max() == 255
    assert len(np.unique(rgb[..., 0])) > 200


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    r, g, b = decode_image(buf.getvalue(), LIMITS).getpixel((20, 20))
    assert r > 200 and b < 50


def test_cmyk_is_converted() -> None:
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    r, g, b = decode_image(encode(cyan, "JPEG"), LIMITS).getpixel((8, 8))
    assert r < 60 and g > 200 and b > 200


def test_byte_cap_is_configurable() -> None:
    payload = jpeg()
    with pytest.raises(ModerationError) as info:
        decode_image(payload, DecodeLimits(max_bytes=len(payload) - 1))
    assert (info.value.reason, info.value.status) == ("too_large", 413)
    assert decode_image(payload, DecodeLimits(max_bytes=len(payload))).mode == "RGB"


def test_pixel_cap_is_configurable() -> None:
    with pytest.raises(ModerationError) as info:
        decode_image(jpeg(320, 240), DecodeLimits(max_pixels=320 * 240 - 1))
    assert info.value.reason == "too_many_pixels"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    """A 12000x12000 PNG would take 144 MB decoded; refusing it must not allocate anywhere near that."""
    bomb = png_bomb(12000)
    tracemalloc.start()
    with pytest.raises(ModerationError):
        decode_image(bomb, LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"refusing the bomb allocated {peak} bytes"


def test_large_jpeg_is_decoded_at_reduced_size_but_keeps_aspect() -> None:
    big = jpeg(2400, 1800)
    fast = decode_image(big, DecodeLimits(fast_jpeg=True))
    full = decode_image(big, DecodeLimits(fast_jpeg=False))
    assert full.size == (2400, 1800)
    assert min(fast.size) >= 224 and fast.size[0] * 3 == fast.size[1] * 4
    assert fast.size[0] < 2400


def test_limits_come_from_the_environment_they_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapping passed (a scorer's settings environment) decides, not os.environ; unset or empty keeps the
    documented default."""
    monkeypatch.setenv("MODERATION_MAX_PIXELS", "5")
    given = DecodeLimits.from_env({"MODERATION_MAX_IMAGE_BYTES": "1000", "MODERATION_MAX_PIXELS": ""}, fast_jpeg=False)
    assert given == DecodeLimits(max_bytes=1000, max_pixels=DecodeLimits.max_pixels, fast_jpeg=False)
    assert DecodeLimits.from_env().max_pixels == 5  # no mapping: the process environment
    with pytest.raises(ModerationError) as info:
        decode_image(jpeg(64, 48), DecodeLimits.from_env({"MODERATION_MAX_PIXELS": str(64 * 48 - 1)}))
    assert info.value.reason == "too_many_pixels"
