"""The ONNX Runtime backend (`handler.backend: onnx`) must give the eager model's scores, not just be fast."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from handlers.imaging import DecodeLimits, decode_image
from handlers.model_io import probabilities
from handlers.registry import build_model, input_array, input_transform, load_checkpoint, normalize
from handlers.scorer import onnx_session
from tests.image_factory import accepted_variants, jpeg

ROOT = Path(__file__).resolve().parent.parent


def _builder():  # model-archive/ is not a package (dash in the name): load the build script as a module
    spec = importlib.util.spec_from_file_location("build_archives", ROOT / "model-archive" / "build_archives.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_archives", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=["mobilenet_v2", "resnet50"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    builder = _builder()
    ckpt = builder.checkpoint_for(request.param)
    path = builder.export_onnx(request.param, ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx")
    model = build_model(request.param)
    load_checkpoint(model, str(ckpt))
    return model.eval(), onnx_session(path)


def _images() -> list:
    raw = [jpeg(640, 480, seed) for seed in range(4)] + list(accepted_variants().values())
    return [decode_image(b, DecodeLimits()) for b in raw]


def test_numpy_pixels_are_the_torchvision_pixels() -> None:
    to_tensor = input_transform()
    for image in _images():
        assert np.array_equal(input_array(image), to_tensor(image).permute(1, 2, 0).numpy())


def test_onnx_scores_match_eager_within_1e3(exported) -> None:
    model, session = exported
    images = _images()
    with torch.inference_mode():
        eager = probabilities(model(normalize()(torch.stack([input_transform()(i) for i in images]))).numpy())
    onnx = probabilities(session.run(None, {"pixels": np.stack([input_array(i) for i in images])})[0])
    assert onnx.shape == eager.shape  # P(harmful) and, with a category head, the category probabilities
    assert np.max(np.abs(onnx - eager)) <= 1e-3


def test_backend_switch_is_validated() -> None:
    from handlers.settings import HandlerSettings

    assert HandlerSettings.load("mobilenet_v2", {"backend": "ONNX"}, env={}).backend == "onnx"
    env = {"MODERATION_BACKEND": "eager"}
    assert HandlerSettings.load("mobilenet_v2", {"backend": "onnx"}, env=env).backend == "eager"
    with pytest.raises(ValueError, match="backend"):
        HandlerSettings.load("mobilenet_v2", {"backend": "tensorrt"}, env={})

