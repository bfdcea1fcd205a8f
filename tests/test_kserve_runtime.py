"""The KServe runtime's own parts: adaptive batching, a torch-free serving process, archives, settings.

The serving contract itself (formats, errors, clients, metrics) runs against this runtime in
tests/test_serving.py, test_serving_errors.py and test_explain.py (parametrised over both runtimes).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kserve_runtime.archives import archives_in
from kserve_runtime.batching import AdaptiveBatcher

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model-archive" / "build" / "model-store"


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    batches: list[int] = []

    def process(items: list[list[float]]) -> list[list[float] | BaseException]:
        batches.append(sum(len(i) for i in items))
        return [ValueError(f"bad {i}") if i == [7.0] else [2 * v for v in i] for i in items]

    async def run() -> list[object]:
        batcher: AdaptiveBatcher[list[float], list[float]] = AdaptiveBatcher(process, max_batch_size=4,
                                                                              max_latency_s=0.05, workers=1)
        try:
            jobs = [[float(i), float(i) + 0.5] if i == 3 else [float(i)] for i in range(10)]
            return await asyncio.gather(*(batcher.submit(j, len(j)) for j in jobs), return_exceptions=True)
        finally:
            await batcher.close()

    results = asyncio.run(run())
    assert isinstance(results[7], ValueError)  # a bad request fails alone
    assert [r[0] for i, r in enumerate(results) if i != 7] == [  # type: ignore[index]
        [2.0 * i, 2.0 * i + 1.0] if i == 3 else [2.0 * i] for i in range(10) if i != 7]
    assert all(r[1] >= 0 for i, r in enumerate(results) if i != 7)  # type: ignore[index]  # queueing seconds
    assert sum(batches) == 11 and len(batches) < 10, batches  # coalesced, every image processed once
    assert max(batches) <= 4 + 1, batches  # closed at max_batch_size (the last request may carry one more)


def test_a_lone_request_is_not_held_past_max_latency_and_failures_reach_their_batch_only() -> None:
    calls = 0

    def process(items: list[float]) -> list[float]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return items

    async def run() -> tuple[BaseException | tuple[float, float], tuple[float, float]]:
        batcher: AdaptiveBatcher[float, float] = AdaptiveBatcher(process, max_batch_size=64, max_latency_s=0.01,
                                                                 workers=2)
        try:
            first = await asyncio.wait_for(asyncio.gather(batcher.submit(1.0), return_exceptions=True), 5)
            second = await asyncio.wait_for(batcher.submit(2.0), 5)  # a batch of one, closed by max_latency
            return first[0], second
        finally:
            await batcher.close()

    failed, ok = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and ok[0] == 2.0
    with pytest.raises(ValueError, match="max_batch_size"):
        AdaptiveBatcher(process, max_batch_size=0, max_latency_s=0.01)


def test_archives_unpack_with_their_config_and_without_code(tmp_path: Path) -> None:
    archives = archives_in(STORE, tmp_path)
    assert [a.name for a in archives] == ["mobilenet_v2", "resnet50"]
    for archive in archives:
        assert archive.config["batchSize"] >= 1 and "threshold" in archive.handler_config
        assert (archive.model_dir / "provenance.json").exists() and (archive.model_dir / "model.onnx").exists()
        assert not list(archive.model_dir.rglob("*.py"))  # the runtime's own handlers/ package is the code
    with pytest.raises(SystemExit, match="make models"):
        archives_in(STORE, tmp_path, ["nope"])


SERVE_ONE = """
import asyncio, json, sys, tempfile
from pathlib import Path
from kserve_runtime.archives import archives_in
from kserve_runtime.model import ModerationModel
from handlers.envelopes import ParsedRequest
from tests.image_factory import jpeg

async def main():
    with tempfile.TemporaryDirectory() as workdir:
        models = [ModerationModel(a) for a in archives_in(Path(sys.argv[1]), Path(workdir))]
        for m in models:
            m.load()
    out = {}
    for m in models:
        out[m.name] = (await m.answer(ParsedRequest("raw", [jpeg()])))["harmful_score"]
        await m.close()
    return out

scores = asyncio.run(main())
print(json.dumps({"scores": scores, "torch": sorted(k for k in sys.modules if k == "torch" or k.startswith("torch."))}))
"""


def test_the_serving_process_never_imports_torch_with_onnx_backends() -> None:
    """A prediction through the runtime's model in a fresh interpreter: ONNX Runtime, numpy and Pillow only."""
    done = subprocess.run([sys.executable, "-c", SERVE_ONE, str(STORE)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["scores"]) == {"mobilenet_v2", "resnet50"}
    assert result["torch"] == [], result["torch"]
