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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from handlers.envelopes import Prediction
from handlers.errors import ModerationError
from handlers.imaging import decode_image
from handlers.model_io import HARMFUL_INDEX, LABELS, harmful_probability, input_array
from handlers.provenance import Provenance
from handlers.settings import HandlerSettings, graph_file

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
CHECKPOINT_FILE = "model.pt"
Pixels = Any  # uint8 HWC numpy array (ONNX backends) or uint8 CHW torch tensor (eager)


class Scorer:
    """P(harmful) and labels for one model, built from what its archive packs (graph or checkpoint, config)."""

    def __init__(self, model_name: str, model_dir: str | os.PathLike[str], config: Mapping[str, Any] | None,
                 version: str, env: Mapping[str, str] | None = None) -> None:
        self.model_name = model_name
        self.version = version
        self.settings = HandlerSettings.load(model_name, config, env)
        self.limits = self.settings.decode_limits()
        self.architecture = str((config or {}).get("architecture", model_name))
        self.provenance = Provenance.read(model_dir, model_name)
        graph = graph_file(self.settings.backend)
        self.onnx = graph is not None  # decided once: _forward runs per chunk of every batch
        if graph is not None:
            self._session = self._onnx_session(os.path.join(model_dir, graph))
            self._to_pixels = input_array
        else:
            self._load_eager(os.path.join(model_dir, CHECKPOINT_FILE))

    def _onnx_session(self, path: str) -> Any:
        """ONNX Runtime session; intra-op threads follow `torch_threads` so workers x threads still fits the CPU."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = max(self.settings.torch_threads, 0)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

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
        self._to_pixels = input_transform()
        self._normalize = normalize()

    def describe(self) -> str:
        threads = self.settings.torch_threads
        return (f"{self.model_name} ({self.architecture}, version {self.version}, backend {self.settings.backend}, "
                f"threshold {self.settings.threshold:.4f}, threads {threads or 'default'}, "
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
            out.append(self._to_pixels(image))
            seconds["decode"] += t1 - t0
            seconds["preprocess"] += time.perf_counter() - t1
        return out

    def scores(self, pixels: Sequence[Pixels]) -> np.ndarray:
        """P(harmful) for every image: one forward pass, or chunks of `forward_batch` images (large CPU batches
        are slower per image)."""
        if not pixels:
            return np.empty(0, dtype=np.float32)
        step = self.settings.forward_batch or len(pixels)
        return np.concatenate([self._forward(pixels[i:i + step]) for i in range(0, len(pixels), step)])

    def _forward(self, pixels: Sequence[Pixels]) -> np.ndarray:
        if self.onnx:
            return harmful_probability(self._session.run(None, {"pixels": np.stack(pixels)})[0])
        import torch

        x = self._normalize(torch.stack(list(pixels)))
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return torch.softmax(self._model(x).float(), dim=1)[:, HARMFUL_INDEX].numpy()

    def prediction(self, score: float) -> Prediction:
        label = LABELS[HARMFUL_INDEX] if score >= self.settings.threshold else LABELS[1 - HARMFUL_INDEX]
        return Prediction(label, round(float(score), 6), self.settings.threshold, self.model_name, self.version)

    def score_floats(self, x: torch.Tensor) -> torch.Tensor:
        """P(harmful) of a float batch in the backend's pixel layout: what captum perturbs for explanations."""
        import torch

        pixels = x.round().clamp(0, 255).to(torch.uint8)
        return torch.from_numpy(self._forward([p.numpy() if self.onnx else p for p in pixels]))

    def explain(self, pixels: Pixels, score: float) -> dict[str, Any]:
        """One image's `:explain` answer (handlers/explain.py): its prediction plus the occlusion grid."""
        from dataclasses import asdict

        from handlers.explain import explanation, occlusion_grid

        grid = occlusion_grid(self.score_floats, pixels, self.settings.explain_grid)
        return explanation(asdict(self.prediction(score)), grid)
