"""One scorer for every runtime: load the served graph (or checkpoint), decode, forward in chunks, label.

The TorchServe handler keeps only TorchServe's context I/O around it and the KServe runtime
(`kserve_runtime/`) only adapts requests to it, so both serve the very same pixels, scores and thresholds.
With an ONNX backend nothing here imports torch (`handlers.model_io` + numpy + Pillow + ONNX Runtime): torch
is imported only for the eager backend and for explanations.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from handlers.envelopes import Prediction
from handlers.errors import ModerationError
from handlers.imaging import DecodeLimits, decode_image
from handlers.model_io import CATEGORIES, HARMFUL_INDEX, LABELS, category_count, decision, input_array, probabilities
from handlers.provenance import Provenance
from handlers.settings import HandlerSettings, graph_file

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)
CHECKPOINT_FILE = "model.pt"
Pixels = Any  # uint8 HWC numpy array (ONNX backends) or uint8 CHW torch tensor (eager)


def onnx_session(path: str | os.PathLike[str], threads: int = 0) -> Any:
    """The one way this project opens an ONNX graph (server, evaluation, quantisation, benchmarks), so a graph
    measured anywhere runs with the server's options: CPU provider, sequential, `threads` intra-op threads
    (0: ONNX Runtime's default, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = max(threads, 0)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Scorer:
    """P(harmful) and labels for one model, built from what its archive packs (graph or checkpoint, config)."""

    def __init__(self, model_name: str, model_dir: str | os.PathLike[str], config: Mapping[str, Any] | None,
                 version: str, env: Mapping[str, str] | None = None) -> None:
        self.model_name = model_name
        self.version = version
        self.settings = HandlerSettings.load(model_name, config, env)
        self.limits = DecodeLimits.from_env(env, fast_jpeg=self.settings.fast_jpeg)  # the settings' environment
        self.architecture = str((config or {}).get("architecture", model_name))
        self.provenance = Provenance.read(model_dir, model_name)
        graph = graph_file(self.settings.backend)
        self.onnx = graph is not None  # decided once: _forward runs per chunk of every batch
        if graph is not None:
            # intra-op threads follow `torch_threads` so workers x threads still fits the CPU
            self._session = onnx_session(os.path.join(model_dir, graph), self.settings.torch_threads)
            self.to_pixels: Callable[[Image.Image], Pixels] = input_array  # a decoded image -> model input
        else:
            self._load_eager(os.path.join(model_dir, CHECKPOINT_FILE))
        self.categories = self._categories()

    def _load_eager(self, checkpoint: str) -> None:
        import torch

        from handlers.registry import build_model, input_transform, load_checkpoint, normalize

        if self.settings.torch_threads > 0:
            torch.set_num_threads(self.settings.torch_threads)
        model = build_model(self.architecture)
        load_checkpoint(model, checkpoint)
        model.eval()
        if self.settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        self.to_pixels = input_transform()
        self._normalize = normalize()

    def describe(self) -> str:
        threads = self.settings.torch_threads
        return (f"{self.model_name} ({self.architecture}, version {self.version}, backend {self.settings.backend}, "
                f"threshold {self.settings.threshold:.4f} / review {self.settings.review_threshold:.4f} "
                f"({self.settings.operating_point}), threads {threads or 'default'}, "
                f"weights: {self.provenance.weights})")

    def pixels(self, images: Sequence[bytes], seconds: Counter[str]) -> list[Pixels]:
        """Decode + resize every image of one request, adding the time to `seconds` ("decode", "preprocess");
        the first bad image fails the request, naming its index when there are several."""
        out = []
        for i, raw in enumerate(images):
            t0 = time.perf_counter()
            try:
                image = decode_image(raw, self.limits)
            except ModerationError as err:
                raise err.at(i) if len(images) > 1 else err from None
            t1 = time.perf_counter()
            out.append(self.to_pixels(image))
            seconds["decode"] += t1 - t0
            seconds["preprocess"] += time.perf_counter() - t1
        return out

    def scores(self, pixels: Sequence[Pixels]) -> np.ndarray:
        """(n, 1 + categories) float32 per image: P(harmful), then each category's probability. One forward pass,
        or chunks of `forward_batch` images (large CPU batches are slower per image)."""
        if not pixels:
            return np.empty((0, 1 + len(self.categories)), dtype=np.float32)
        step = self.settings.forward_batch or len(pixels)
        return np.concatenate([self._forward(pixels[i:i + step]) for i in range(0, len(pixels), step)])

    def _forward(self, pixels: Sequence[Pixels]) -> np.ndarray:
        if self.onnx:
            return probabilities(self._session.run(None, {"pixels": np.stack(pixels)})[0])
        import torch

        x = self._normalize(torch.stack(list(pixels)))
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return probabilities(self._model(x).float().numpy())

    def _categories(self) -> tuple[str, ...]:
        """The harmful categories this model scores (none without a category head), from its output width."""
        if self.onnx:
            width = self._session.get_outputs()[0].shape[1]
        else:
            width = [m for m in self._model.modules() if type(m).__name__ == "Linear"][-1].out_features
        return CATEGORIES[:category_count(int(width))]

    def prediction(self, row: np.ndarray) -> Prediction:
        """One image's answer from its row of `scores`: label, decision and category scores."""
        score = float(row[0])
        s = self.settings
        label = LABELS[HARMFUL_INDEX] if score >= s.threshold else LABELS[1 - HARMFUL_INDEX]
        cats = {c: round(float(p), 6) for c, p in zip(CATEGORIES, row[1:], strict=False)} if len(row) > 1 else None
        return Prediction(label, round(score, 6), s.threshold, self.model_name, self.version,
                          decision(score, s.threshold, s.review_threshold),  # type: ignore[arg-type]
                          s.review_threshold, cats)

    def score_floats(self, x: torch.Tensor) -> torch.Tensor:
        """P(harmful) of a float batch in the backend's pixel layout: what captum perturbs for explanations."""
        import torch

        pixels = x.round().clamp(0, 255).to(torch.uint8)
        return torch.from_numpy(self._forward([p.numpy() if self.onnx else p for p in pixels])[:, 0])

    def explain(self, pixels: Pixels, row: np.ndarray) -> dict[str, Any]:
        """One image's `:explain` answer (handlers/explain.py): its prediction plus the occlusion grid."""
        from handlers.explain import explanation, occlusion_grid

        grid = occlusion_grid(self.score_floats, pixels, self.settings.explain_grid)
        return explanation(self.prediction(row).to_dict(), grid)
