"""The one model registry: architectures, class names and preprocessing constants.

The TorchServe handler, training, evaluation and the benchmark all import from here, so a
checkpoint trained by `make train` always loads into exactly the module the server builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models
from torchvision.transforms import v2 as T

LABELS: tuple[str, str] = ("benign", "harmful")
HARMFUL_INDEX = LABELS.index("harmful")
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture with a 2-class head."""

    name: str
    build_backbone: Callable[[], nn.Module]
    head_path: str  # dotted attribute of the final Linear layer
    backbone_prefix: str  # state-dict prefix of the ImageNet feature extractor


def _mobilenet_v2() -> nn.Module:
    return models.mobilenet_v2(weights=None)


def _resnet50() -> nn.Module:
    return models.resnet50(weights=None)


REGISTRY: dict[str, ModelSpec] = {
    "mobilenet_v2": ModelSpec("mobilenet_v2", _mobilenet_v2, "classifier.1", "features."),
    "resnet50": ModelSpec("resnet50", _resnet50, "fc", ""),
}
MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}") from None


def _set_attr(module: nn.Module, dotted: str, value: nn.Module) -> None:
    parent_path, _, leaf = dotted.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, leaf, value)


def head(model: nn.Module, name: str) -> nn.Linear:
    """The 2-class Linear head of a model built by `build_model`."""
    layer = model.get_submodule(spec(name).head_path)
    assert isinstance(layer, nn.Linear)
    return layer


def build_model(name: str) -> nn.Module:
    """Architecture `name` with a fresh `len(LABELS)`-way head and no weights loaded."""
    s = spec(name)
    model = s.build_backbone()
    old = model.get_submodule(s.head_path)
    assert isinstance(old, nn.Linear)
    _set_attr(model, s.head_path, nn.Linear(old.in_features, len(LABELS)))
    return model


def load_checkpoint(model: nn.Module, path: str, map_location: str = "cpu") -> dict:
    """Load a checkpoint written by training (`{"state_dict", "meta"}`, fp16 allowed); return its meta."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    state = blob.get("state_dict", blob)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return dict(blob.get("meta", {})) if isinstance(blob, dict) else {}


def input_transform() -> T.Compose:
    """RGB PIL image -> uint8 3x224x224 tensor (PIL antialiased bilinear resize, whole image kept).

    Serving stacks these uint8 tensors and normalises the whole batch at once; training and
    evaluation use the same steps through `eval_transform`, so both see identical pixels.
    """
    return T.Compose([T.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True), T.PILToTensor()])


def normalize() -> T.Compose:
    """uint8 CHW (or NCHW) tensor -> float, ImageNet-normalised."""
    return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform() -> T.Compose:
    """RGB PIL image -> normalised 3x224x224 float tensor: the reference system's preprocessing."""
    return T.Compose([input_transform(), normalize()])
