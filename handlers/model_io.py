"""What goes into and comes out of every model, without torch: class names, input size, normalisation, pixels.

Split from `handlers/registry.py` (which builds the torch modules) so that an ONNX Runtime worker (the KServe
runtime, `kserve_runtime/`) decodes, resizes and labels exactly as the TorchServe handler and training do while
importing only numpy and Pillow; `handlers.registry` re-exports all of it for everyone else.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from handlers.outputs import CATEGORIES, DECISIONS, decision  # noqa: F401 - re-exported for model-side callers

LABELS: tuple[str, str] = ("benign", "harmful")
HARMFUL_INDEX = LABELS.index("harmful")
MODEL_NAMES: tuple[str, ...] = ("mobilenet_v2", "resnet50")  # registry.REGISTRY builds exactly these
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_array(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> uint8 224x224x3 array: the very pixels of `registry.input_transform` (same PIL bilinear
    resize) without torch/torchvision, for the ONNX Runtime path, whose graph normalises (`PixelGraph`)."""
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))


def harmful_probability(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class logits of an (n, len(LABELS) [+ categories]) logit array -> P(harmful) per row."""
    z = logits[:, :len(LABELS)].astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, HARMFUL_INDEX] / e.sum(axis=1)).astype(np.float32)


def category_count(width: int) -> int:
    """How many categories a graph with `width` logits per image scores: 0 or len(CATEGORIES)."""
    extra = width - len(LABELS)
    if extra not in (0, len(CATEGORIES)):
        raise ValueError(f"a model with {width} logits per image: expected {len(LABELS)} (classes) or "
                         f"{len(LABELS) + len(CATEGORIES)} (classes + {', '.join(CATEGORIES)})")
    return extra


def probabilities(logits: np.ndarray) -> np.ndarray:
    """(n, width) logits -> (n, 1 + categories) float32: P(harmful), then each category's sigmoid probability."""
    n_cat = category_count(logits.shape[1])
    cats = 1.0 / (1.0 + np.exp(-logits[:, len(LABELS):len(LABELS) + n_cat].astype(np.float64)))
    return np.column_stack([harmful_probability(logits), cats]).astype(np.float32)
