"""A KServe runtime process of its own for a test: the variables a deployment sets, on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.kafka_support import LOG_DIR, ROOT, free_port, wait_for


@contextmanager
def kserve_runtime(models: str, workdir: Path, log_name: str, **env: str) -> Iterator[str]:
    """`python -m kserve_runtime` serving `models` (comma-separated) with `env` on top of the test's environment
    (what the chart's values become on the predictor); yields its base URL once every model is ready and stops
    it afterwards. The shared local stack cannot take per-test variables, so such tests start their own."""
    http, grpc = free_port(), free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / log_name
    base = f"http://127.0.0.1:{http}"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kserve_runtime"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "KSERVE_HOST": "127.0.0.1", "KSERVE_HTTP_PORT": str(http),
                                     "KSERVE_GRPC_PORT": str(grpc), "KSERVE_MODELS": models,
                                     "KSERVE_WORKDIR": str(workdir), **env})

    def ready() -> bool:
        assert proc.poll() is None, f"kserve runtime exited {proc.returncode}: {log_path.read_text()[-3000:]}"
        try:
            return all(httpx.get(f"{base}/v2/models/{m}/ready", timeout=2).status_code == 200
                       for m in models.split(","))
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 240, f"the KServe runtime ({log_name})", 0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
