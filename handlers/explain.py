"""Occlusion attribution for KServe v1 `:explain`: which parts of an image raised P(harmful).

Captum's Occlusion greys out one cell of a coarse grid at a time and records how much the harmful score
drops. It needs nothing but the model's scoring function, so it explains the very graph being served
(the int8 ONNX one included), not an eager stand-in. The answer is a grid of numbers, not a heat-map PNG:
small, exact, and drawable over the original photo at any size (`python -m demo.explain` does that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from handlers.model_io import IMAGE_SIZE, IMAGENET_MEAN

METHOD = "occlusion"
# ImageNet mean colour: an occluded cell looks like "nothing in particular" rather than black, which is itself
# a strong feature (dark scenes) for these models.
_GREY = tuple(round(255 * c) for c in IMAGENET_MEAN)


def occlusion_grid(
    score: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor | np.ndarray,
    grid: int,
    per_eval: int = 8,
) -> list[list[float]]:
    """grid x grid drops in P(harmful) when each cell of the 224x224 input is greyed out (row-major, top first).

    `pixels` is one image as the backend takes it (uint8 HWC for ONNX, CHW for eager PyTorch); `score` maps a
    float batch of that layout to P(harmful) per image. Positive values: the cell raised the harmful score.
    """
    from captum.attr import Occlusion  # imported on the first explanation: captum pulls in matplotlib (~25 MB RSS)

    if IMAGE_SIZE % grid:
        raise ValueError(f"explain grid {grid} must divide {IMAGE_SIZE}")
    x = torch.as_tensor(np.asarray(pixels)).float().unsqueeze(0)
    channels_last = x.shape[-1] == 3
    cell = IMAGE_SIZE // grid
    window = (cell, cell, 3) if channels_last else (3, cell, cell)
    grey = torch.tensor(_GREY, dtype=torch.float32)
    baseline = (grey if channels_last else grey[:, None, None]).expand_as(x[0]).unsqueeze(0).contiguous()
    attribution = Occlusion(score).attribute(
        x, sliding_window_shapes=window, strides=window, baselines=baseline, perturbations_per_eval=per_eval
    )[0]
    plane = attribution[..., 0] if channels_last else attribution[0]
    return [[round(float(plane[i * cell, j * cell]), 6) for j in range(grid)] for i in range(grid)]


def explanation(prediction: dict[str, Any], grid: list[list[float]]) -> dict[str, Any]:
    """One image's `:explain` answer: its prediction plus the documented attribution fields."""
    return {**prediction, "method": METHOD, "grid": grid, "cell_px": IMAGE_SIZE // len(grid), "input_px": IMAGE_SIZE}
