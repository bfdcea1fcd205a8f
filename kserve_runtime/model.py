"""One moderation model as a `kserve.Model`: load() builds the shared Scorer, the rest adapts requests to it.

REST requests reach it already parsed (`kserve_runtime.rest` reads raw bytes, v1 and v2 JSON, and the v2 binary
data extension with `handlers.envelopes`); gRPC requests arrive as kserve `InferRequest`s and are answered with
`InferResponse`s. Decoding runs in a thread per request, the forward pass in the adaptive batcher.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from handlers.envelopes import (
    V2_CATEGORIES_OUTPUT,
    V2_OUTPUTS,
    ParsedRequest,
    Prediction,
    parse_v2_inputs,
    render_response,
)
from handlers.errors import ModerationError
from handlers.model_io import CATEGORIES
from handlers.scorer import Pixels, Scorer
from kserve_runtime import LOGGER_NAME
from kserve_runtime.archives import Archive
from kserve_runtime.batching import AdaptiveBatcher
from kserve_runtime.metrics import FRONTEND, PrometheusModerationMetrics

log = logging.getLogger(LOGGER_NAME)

# Explanations run captum on torch tensors: present in the dev venv, left out of the torch-free image.
EXPLAIN_AVAILABLE = all(importlib.util.find_spec(m) is not None for m in ("captum", "torch"))


class ServerRefusal(Exception):
    """A server-side reason of handlers.errors (not the client's fault), answered as {"error", "reason"}."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class Scored:
    """One request's outcome: its predictions, and the pixels/scores an explanation needs."""

    predictions: list[Prediction]
    pixels: list[Pixels]
    scores: np.ndarray


class ModerationModel(Model):
    """Harmful/benign classifier served from one `.mar` (same graph, config and threshold as TorchServe)."""

    def __init__(self, archive: Archive) -> None:
        super().__init__(archive.name)
        self.archive = archive
        self.version = archive.version
        self.scorer: Scorer | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.metrics = PrometheusModerationMetrics(archive.name)

    def load(self) -> bool:
        cfg = self.archive.config
        self.scorer = Scorer(self.name, self.archive.model_dir, self.archive.handler_config, self.version)
        # TorchServe's batching keys of the same model config: batchSize (here in images), maxBatchDelay (ms),
        # minWorkers (batches decoded and run at once, each forward with `torch_threads` intra-op threads).
        self.batcher = AdaptiveBatcher(
            self._process,
            max_batch_size=int(cfg.get("batchSize", 8)),
            max_latency_s=float(cfg.get("maxBatchDelay", 5)) / 1000,
            workers=int(cfg.get("minWorkers", 1)),
        )
        self.ready = True
        return self.ready

    def _process(self, requests: list[list[bytes]]) -> list[tuple[list[Pixels], np.ndarray] | Exception]:
        """One server-side batch, in a worker thread: decode every request (a bad one fails alone), one forward
        pass over all good images (chunks of forward_batch), the stage metrics once per batch."""
        assert self.scorer is not None
        seconds: Counter[str] = Counter()
        outcomes: list[Any] = [None] * len(requests)
        pixels: list[Pixels] = []
        spans: list[tuple[int, int, int]] = []
        for i, images in enumerate(requests):
            try:
                decoded = self.scorer.pixels(images, seconds)
            except ModerationError as err:
                self.metrics.rejected(err.reason)
                outcomes[i] = err
                continue
            except Exception as exc:  # noqa: BLE001 - a bug on one request must not fail its neighbours
                log.exception("unexpected error decoding a request of %s", self.name)
                outcomes[i] = exc
                continue
            spans.append((i, len(pixels), len(pixels) + len(decoded)))
            pixels.extend(decoded)
        for stage, spent in seconds.items():
            self.metrics.stage(stage, spent)
        if pixels:
            t0 = time.perf_counter()
            scores = self.scorer.scores(pixels)
            self.metrics.stage("inference", time.perf_counter() - t0)
            self.metrics.batch_images(len(pixels))
        for i, start, end in spans:
            outcomes[i] = (pixels[start:end], scores[start:end])
        return outcomes

    async def score(self, images: list[bytes]) -> Scored:
        """Decode and score in whichever server-side batch the request lands in."""
        assert self.scorer is not None and self.batcher is not None, "model not loaded"
        t0 = time.perf_counter()
        (pixels, scores), queued = await self.batcher.submit(images, len(images))
        predictions = [self.scorer.prediction(row) for row in scores]
        for label, count in Counter(p.label for p in predictions).items():
            self.metrics.predicted(label, count)
        for decision, count in Counter(p.decision for p in predictions if p.decision).items():
            self.metrics.decided(decision, count)
        FRONTEND.inference(self.name, self.version, (time.perf_counter() - t0) * 1e6, queued * 1e6)
        return Scored(predictions, pixels, scores)

    async def answer(self, request: ParsedRequest, explain: bool = False) -> dict[str, Any]:
        """A REST request's JSON body, in the style it arrived in (or {"explanations": [...]})."""
        scored = await self.score(request.images)
        if explain:
            assert self.scorer is not None
            if not EXPLAIN_AVAILABLE:
                raise ServerRefusal("explain_unavailable", ":explain needs captum and torch, which this runtime's "
                                    "image leaves out (torch-free serving); use the TorchServe runtime's image")
            loop = asyncio.get_running_loop()
            out = [await loop.run_in_executor(None, self.scorer.explain, p, s)
                   for p, s in zip(scored.pixels, scored.scores, strict=True)]
            return {"explanations": out}
        if request.protocol == "v2" and request.request_id is None:  # as TorchServe: its own id when none was sent
            request = ParsedRequest("v2", request.images, uuid.uuid4().hex)
        return render_response(request, scored.predictions, self.name, self.version)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    # -- kserve's gRPC path (dataplane -> Model.__call__ -> preprocess/predict) -----------------------------------

    async def preprocess(self, payload: InferRequest | ParsedRequest, headers: dict[str, str] | None = None
                         ) -> ParsedRequest:
        if isinstance(payload, ParsedRequest):
            return payload
        inputs = [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape),
                   "data": [v for v in np.asarray(i.as_numpy(), dtype=object).ravel()]} for i in payload.inputs]
        try:
            return parse_v2_inputs(inputs, payload.id or None, binary=True)
        except ModerationError as err:  # gRPC INVALID_ARGUMENT, reason first
            raise InvalidInput(f"{err.reason}: {err.message}") from None

    async def predict(self, payload: ParsedRequest, headers: dict[str, str] | None = None) -> InferResponse:
        try:
            scored = await self.score(payload.images)
        except ModerationError as err:
            raise InvalidInput(f"{err.reason}: {err.message}") from None
        preds = scored.predictions
        outputs = []
        for name, datatype in V2_OUTPUTS.items():
            data = np.array([getattr(p, name) for p in preds], dtype=object if datatype == "BYTES" else np.float32)
            output = InferOutput(name=name, shape=[len(data)], datatype=datatype)
            output.set_data_from_numpy(data, binary_data=False)
            outputs.append(output)
        if preds and preds[0].categories is not None:  # the same extra output as REST (envelopes.render_response)
            table = np.array([[p.categories[c] for c in CATEGORIES] for p in preds], dtype=np.float32)  # type: ignore[index]
            output = InferOutput(name=V2_CATEGORIES_OUTPUT, shape=list(table.shape), datatype="FP32",
                                 parameters={"categories": ",".join(CATEGORIES)})
            output.set_data_from_numpy(table, binary_data=False)
            outputs.append(output)
        # raw_output_contents, as Triton answers: tritonclient.grpc reads only those (or bytes_contents)
        return InferResponse(payload.request_id or "", self.name, outputs, model_version=self.version,
                             use_binary_outputs=True)
