"""In-process mode: the executors run the model archive's own graph, thresholds and decoding (`handlers.scorer`,
the very code TorchServe and the KServe runtime serve with), for clusters where calling a service per record is
the wrong shape. Each image is decoded alone, so a bad one is dead-lettered alone with the handler's reason."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from handlers.envelopes import Prediction
from handlers.errors import ModerationError
from handlers.scorer import Scorer
from kserve_runtime.archives import unpack
from streaming.process import Work


def score_images(scorer: Scorer, images: Sequence[bytes]) -> list[Prediction | ModerationError]:
    """Each image's prediction, or the handler's refusal of that image alone (decoded one by one; one forward pass
    over the good ones, in the scorer's chunks)."""
    results: list[Prediction | ModerationError] = []
    good, pixels = [], []
    for i, raw in enumerate(images):
        try:
            pixels.extend(scorer.pixels([raw], Counter()))
        except ModerationError as err:
            results.append(err)
            continue
        results.append(None)  # type: ignore[arg-type]  # filled below
        good.append(i)
    for i, row in zip(good, scorer.scores(pixels), strict=True):
        results[i] = scorer.prediction(row)
    return results


class InProcessClassifier:
    """Scorers of the `.mar` archives in `model_store`, built on first use (one per model and process)."""

    def __init__(self, model_store: str | Path) -> None:
        self.store = Path(model_store)
        self.archives = {p.stem: p for p in sorted(self.store.glob("*.mar"))}
        if not self.archives:
            raise FileNotFoundError(f"no .mar archive in {self.store}: run `make models` (STREAMING_MODEL_STORE)")
        self.models = tuple(self.archives)
        self._scorers: dict[str, Scorer] = {}

    def scorer(self, model: str) -> Scorer:
        if model not in self._scorers:
            # Unpacked only while the scorer loads (it keeps the graph in memory): Spark's Python workers end with
            # os._exit, so no atexit hook runs, and a folder kept per worker leaked 18 MB per task into /tmp.
            with tempfile.TemporaryDirectory(prefix="moderation-models-") as workdir:
                archive = unpack(self.archives[model], Path(workdir))
                self._scorers[model] = Scorer(archive.name, archive.model_dir, archive.handler_config, archive.version)
        return self._scorers[model]

    async def classify(self, model: str, works: Sequence[Work]) -> None:
        t0 = time.perf_counter()
        results = score_images(self.scorer(model), [w.image for w in works])
        ms = (time.perf_counter() - t0) * 1000
        scored = sum(isinstance(r, Prediction) for r in results)
        for w, result in zip(works, results, strict=True):
            if isinstance(result, Prediction):
                w.predicted(result, ms, scored)
            else:
                w.fail(result.reason, result.message, result.status)
