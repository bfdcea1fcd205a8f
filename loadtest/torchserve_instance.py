"""A throw-away TorchServe for the benchmark, on its own loopback ports, worker sockets and log folder.

The benchmark starts our archive and the stock-handler archive one after the other (never together, so
each gets both cores) without touching the `make up` stack: the config is our template rendered with
other ports plus `initial_worker_port`, because TorchServe names its worker sockets /tmp/.ts.sock.<port>.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "model-archive"))

import build_archives  # noqa: E402  (model-archive/ is a script folder, not a package)


@dataclass
class Ports:
    """Inference, management, metrics, gRPC (unused but always bound) and first worker port of one instance."""

    inference: int
    management: int
    metrics: int
    grpc: int  # grpc inference = grpc, grpc management = grpc + 1
    worker: int


OURS_PORTS = Ports(8285, 8281, 8282, 7270, 9300)
STOCK_PORTS = Ports(8185, 8181, 8182, 7170, 9200)


@dataclass
class TorchServeInstance:
    name: str
    store: Path
    ports: Ports
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    tmpdir: Path | None = None
    builtin_logging: bool = False  # TorchServe's own log4j2 config instead of ours (bench --torchserve-logging)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        build_archives.render_config(
            config,
            {
                "INFERENCE_BIND": f"127.0.0.1:{self.ports.inference}",
                "MANAGEMENT_BIND": f"127.0.0.1:{self.ports.management}",
                "METRICS_BIND": f"127.0.0.1:{self.ports.metrics}",
                "GRPC_INFERENCE_PORT": str(self.ports.grpc),
                "GRPC_MANAGEMENT_PORT": str(self.ports.grpc + 1),
                "CONFIG_DIR": str(self.workdir),
                "MODEL_STORE": str(self.store),
                "JOB_QUEUE_SIZE": "1000",
                "WORKERS": "1",
            },
        )
        if self.builtin_logging:
            text = config.read_text()
            config.write_text(re.sub(r" -Dlog4j\.configurationFile=\S+", "", text))
        with config.open("a") as fh:
            fh.write(f"initial_worker_port={self.ports.worker}\n")
        # TorchServe refuses to start while /tmp/.model_server.pid names a live server (the `make up` one):
        # a private TMPDIR gives this instance its own pid file (and worker sockets, short path for AF_UNIX);
        # TEMP sets the frontend's java.io.tmpdir, where it unpacks the archives.
        self.tmpdir = Path(tempfile.mkdtemp(prefix="ts-bench-"))
        env = {**os.environ, "LOG_LOCATION": str(self.workdir), "METRICS_LOCATION": str(self.workdir),
               "TMPDIR": str(self.tmpdir), "TEMP": str(self.tmpdir), **self.env}
        log = (self.workdir / "torchserve.log").open("ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
             "--ts-config", str(config), "--model-store", str(self.store), "--models", "all",
             "--disable-token-auth"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )

    def wait_first_prediction(self, model: str, image: bytes, timeout_s: float = 300) -> float:
        """Cold start: seconds from process start until the first successful prediction."""
        return first_prediction_after(f"{self.url}/predictions/{model}", image, self.proc, self.started_at,
                                      f"{self.name} TorchServe (log: {self.workdir}/torchserve.log)", timeout_s)

    def wait_all_ready(self, models: list[str], image: bytes) -> dict[str, float]:
        return {m: self.wait_first_prediction(m, image) for m in models}

    def workers(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p for p in procs if "model_service_worker" in " ".join(p.cmdline())]

    def worker_memory_mb(self) -> list[dict[str, float]]:
        """RSS (what `ps` shows), PSS (shared library pages split between workers), USS (private) per worker,
        and the RSS of the CUDA libraries the PyPI torch wheel maps although nothing here uses a GPU."""
        out = []
        for p in self.workers():
            try:
                info = p.memory_full_info()
                cuda = cuda_library_rss_mb(p.pid)
            except psutil.Error:
                continue
            out.append({"rss": info.rss / 2**20, "pss": info.pss / 2**20, "uss": info.uss / 2**20, "cuda_libs": cuda})
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def first_prediction_after(url: str, image: bytes, proc: subprocess.Popen | None, started_at: float, what: str,
                           timeout_s: float) -> float:
    """Seconds from `started_at` until `url` first answers a JPEG with 200 (a server's cold start); fails early
    when `proc` exits. Shared by every server the benchmarks start."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        try:
            r = httpx.post(url, content=image, headers={"Content-Type": "image/jpeg"}, timeout=30)
            if r.status_code == 200:
                return time.perf_counter() - started_at
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what}: no prediction within {timeout_s}s")


CUDA_LIBRARY_MARKERS = ("/nvidia/", "libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc", "libtorch_nvshmem")


def cuda_library_rss_mb(pid: int) -> float:
    """Resident MB of a process's CUDA library mappings (their file pages, the pages relocation dirtied, and
    the anonymous mapping right after each one: its .bss, which static initialisers fill): what a CPU-only
    torch build would not map (/proc/<pid>/smaps; raises psutil.Error like psutil)."""
    total_kb, cuda, after_cuda_end = 0, False, None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(maxsplit=6)
                if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
                    start, end = head[0].split("-")
                    # an anonymous mapping is a CUDA library's .bss when it starts where that library ends
                    named = len(head) > 5
                    cuda = any(m in head[5] for m in CUDA_LIBRARY_MARKERS) if named else start == after_cuda_end
                    after_cuda_end = end if cuda and named else None
                elif cuda and head[0] == "Rss:":
                    total_kb += int(head[1])
    except OSError as exc:
        raise psutil.AccessDenied(pid) if isinstance(exc, PermissionError) else psutil.NoSuchProcess(pid) from exc
    return total_kb / 1024


def import_torch_rss_mb() -> dict[str, float]:
    """RSS of a bare `python -c "import torch"` from this venv, and its CUDA share: the floor of any
    TorchServe worker, which imports torch whatever the handler does (ts/protocol/otf_message_handler.py)."""
    code = "import sys, torch; print('imported', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout is None or proc.stdout.readline().strip() != "imported":
            raise RuntimeError("python -c 'import torch' failed")
        return {"rss": psutil.Process(proc.pid).memory_info().rss / 2**20, "cuda_libs": cuda_library_rss_mb(proc.pid)}
    finally:
        proc.communicate("")
