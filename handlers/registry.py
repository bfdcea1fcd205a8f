"""The one model registry: architectures, class names and preprocessing constants.

The TorchServe handler, training, evaluation and the benchmark all import from here, so a
checkpoint trained by `make train` always loads into exactly the module the server builds.
torchvision is imported lazily: an ONNX Runtime worker never needs it, and importing it costs ~160 MB RSS
(it pulls in torch._dynamo and triton).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.transforms import v2 as T

from handlers.model_io import (  # noqa: F401 - re-exported: the torch-free half of the registry
    CATEGORIES,
    HARMFUL_INDEX,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LABELS,
    MODEL_NAMES,
    input_array,
)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture with a 2-class head."""

    name: str
    build_backbone: Callable[[], nn.Module]
    head_path: str  # dotted attribute of the final Linear layer
    backbone_prefix: str  # state-dict prefix of the ImageNet feature extractor


def _mobilenet_v2() -> nn.Module:
    from torchvision import models

    return models.mobilenet_v2(weights=None)


def _resnet50() -> nn.Module:
    from torchvision import models

    return models.resnet50(weights=None)


REGISTRY: dict[str, ModelSpec] = {
    "mobilenet_v2": ModelSpec("mobilenet_v2", _mobilenet_v2, "classifier.1", "features."),
    "resnet50": ModelSpec("resnet50", _resnet50, "fc", ""),
}
assert tuple(REGISTRY) == MODEL_NAMES, "handlers.model_io.MODEL_NAMES must list the registry's models"


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


def build_model(name: str, categories: bool = False) -> nn.Module:
    """Architecture `name` with a fresh head and no weights loaded: `len(LABELS)` class logits, followed by one
    logit per `model_io.CATEGORIES` when `categories`."""
    s = spec(name)
    model = s.build_backbone()
    old = model.get_submodule(s.head_path)
    assert isinstance(old, nn.Linear)
    _set_attr(model, s.head_path, nn.Linear(old.in_features, len(LABELS) + (len(CATEGORIES) if categories else 0)))
    return model


def load_checkpoint(model: nn.Module, path: str, map_location: str = "cpu") -> dict:
    """Load a checkpoint written by training (`{"state_dict", "meta"}`, fp16 allowed); return its meta.
    The head is resized to the checkpoint's (class logits only, or with the category logits)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    state = blob.get("state_dict", blob)
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if isinstance(module, nn.Linear) and weight is not None and weight.shape != module.weight.shape:
            _set_attr(model, name, nn.Linear(weight.shape[1], weight.shape[0]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return dict(blob.get("meta", {})) if isinstance(blob, dict) else {}


def input_transform() -> T.Compose:
    """RGB PIL image -> uint8 3x224x224 tensor (PIL antialiased bilinear resize, whole image kept).

    Serving stacks these uint8 tensors and normalises the whole batch at once; training and
    evaluation use the same steps through `eval_transform`, so both see identical pixels.
    """
    from torchvision.transforms import v2 as T

    return T.Compose([T.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True), T.PILToTensor()])


def normalize() -> T.Compose:
    """uint8 CHW (or NCHW) tensor -> float, ImageNet-normalised."""
    from torchvision.transforms import v2 as T

    return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform() -> T.Compose:
    """RGB PIL image -> normalised 3x224x224 float tensor: the reference system's preprocessing."""
    from torchvision.transforms import v2 as T

    return T.Compose([input_transform(), normalize()])


class PixelGraph(nn.Module):
    """uint8 NHWC batch -> logits, with `normalize` folded in: the graph exported to ONNX.

    Normalising and transposing inside the graph lets ONNX Runtime fuse them into the first
    convolution instead of the worker doing it in numpy.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.model((x - self.mean) / self.std)
