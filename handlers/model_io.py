"""What goes into and comes out of every model, without torch: class names, input size, normalisation, pixels.

Split from `handlers/registry.py` (which builds the torch modules) so that an ONNX Runtime worker (the KServe
runtime, `kserve_runtime/`) decodes, resizes and labels exactly as the TorchServe handler and training do while
importing only numpy and Pillow; `handlers.registry` re-exports all of it for everyone else.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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
    """Softmax over the class axis of an (n, len(LABELS)) logit array -> P(harmful) per row, float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, HARMFUL_INDEX] / e.sum(axis=1)).astype(np.float32)
