"""`make loadtest` machinery on the real stack: a short headless Locust run writes its CSV, and the SLO gate
turns a breach into a non-zero exit code (and a met SLO into 0). Speed itself is `make bench`'s business."""

from __future__ import annotations

import csv
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from loadtest.slo import Slo, check
from tests.kafka_support import BridgeProcess, Topics, kafka, topics  # noqa: F401  (fixtures)
from tests.s3_support import s3  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent


def test_slo_gate_both_ways() -> None:
    slo = Slo(p95_ms=100, max_error_rate=0.01)
    assert check(slo, 200, 1, 80.0).ok
    assert not check(slo, 200, 1, 120.0).ok  # too slow
    assert not check(slo, 200, 10, 80.0).ok  # too many errors
    assert not check(slo, 0, 0, None).ok  # nothing measured


def _locust(tmp: Path, serving: str, p95_ms: str, *users: str, **env: str) -> tuple[int, Path]:
    # small images: the smoke test checks the machinery, not speed, and must not time out on a busy machine
    env = {**os.environ, "LOADTEST_P95_MS": p95_ms, "LOADTEST_KAFKA": "0", "LOADTEST_SIZES": "320x240:1", **env}
    prefix = tmp / f"locust-{p95_ms}"
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "locust"), "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
         "-u", "2", "-r", "2", "-t", "10s", "--stop-timeout", "20", "-H", serving, "--only-summary",
         "--csv", str(prefix), *users],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    return proc.returncode, Path(f"{prefix}_stats.csv")


@pytest.mark.parametrize(("p95_ms", "expected_exit"), [("60000", 0), ("0.001", 1)])
def test_headless_run_writes_csv_and_gates(serving: str, tmp_path: Path, p95_ms: str, expected_exit: int) -> None:
    code, stats = _locust(tmp_path, serving, p95_ms)
    assert code == expected_exit
    rows = {r["Name"]: r for r in csv.DictReader(stats.open())}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0


def test_kafka_user_measures_end_to_end_through_a_real_bridge(kafka: str, topics: Topics, serving: str,  # noqa: F811
                                                               tmp_path: Path) -> None:
    """The Kafka user (gevent: it must never block the hub in librdkafka) on private topics and a bridge."""
    bridge = BridgeProcess(topics, kafka, serving).start()
    try:
        code, stats = _locust(tmp_path, serving, "60000", "KafkaUser", LOADTEST_KAFKA="1",
                              KAFKA_BOOTSTRAP_SERVERS=kafka, KAFKA_INPUT_TOPIC=topics.input,
                              KAFKA_OUTPUT_TOPIC=topics.output, KAFKA_DLQ_TOPIC=topics.dlq)
    finally:
        bridge.stop_quietly()
    assert code == 0
    rows = {r["Name"]: r for r in csv.DictReader(stats.open())}
    kafka_row = rows["image_data -> image_predictions"]
    assert int(kafka_row["Request Count"]) > 5, kafka_row
    assert int(kafka_row["Failure Count"]) == 0, kafka_row


def test_cpu_by_role_counts_the_process_that_burns_it() -> None:
    """`make bench`'s CPU table: a busy loop in this process shows up as ~1 core of the load generator."""
    from loadtest.cpu import LOADGEN, cores_by_role

    with cores_by_role() as cores:
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            pass
    assert 0.5 < cores[LOADGEN] <= 1.2, cores


@pytest.mark.skipif(not os.access("/sys/fs/cgroup/cpu/cgroup.procs", os.W_OK), reason="needs root and cgroup v1")
def test_cpu_limit_puts_processes_under_a_quota_and_gives_them_back() -> None:
    """`reference_bench --serving-cores`: the model server runs under a CFS quota (a pod's CPU limit) for the
    block only; what it starts meanwhile comes back out too."""
    import sys

    from loadtest.cpu import _cpu_cgroup, cpu_limit

    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; sys.stdin.readline(); "
                              "subprocess.Popen(['sleep', '30']); time.sleep(30)"], stdin=subprocess.PIPE, text=True)
    try:
        home = _cpu_cgroup(child.pid)
        with cpu_limit([child.pid], 0.25, name="image-moderation-test"):
            assert _cpu_cgroup(child.pid) == "/image-moderation-test"
            quota = Path("/sys/fs/cgroup/cpu/image-moderation-test/cpu.cfs_quota_us").read_text()
            assert int(quota) == 25000
            child.stdin.write("go\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            deadline = time.monotonic() + 10
            while not (grandchildren := psutil.Process(child.pid).children()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _cpu_cgroup(grandchildren[0].pid) == "/image-moderation-test"
        assert _cpu_cgroup(child.pid) == home and _cpu_cgroup(grandchildren[0].pid) == home
        assert not Path("/sys/fs/cgroup/cpu/image-moderation-test").exists()
    finally:
        for proc in psutil.Process(child.pid).children():
            proc.kill()
        child.kill()
        child.wait()


def test_bridge_costs_measures_both_steps_both_ways(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """`make bench-references`' first table runs (its numbers are a benchmark's business, not compared here)."""
    from loadtest import bridge_costs

    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    out = bridge_costs.main(["--calls", "5"])
    assert len(out) == 2 and all(v["before"] > 0 and v["now"] > 0 for v in out.values())


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_cpu_by_role_splits_out_the_frontend_jit(serving: str) -> None:
    """A JVM that has served requests has spent CPU compiling them; the bench reports that share apart."""
    import httpx

    from loadtest.cpu import JIT, JIT_OF, _jit_seconds, cores_by_role
    from tests.image_factory import jpeg

    # The local stack's frontend: the JVM in scripts/serving.sh's process group (a local cluster's predictor
    # pods run TorchServe JVMs of their own, visible here too).
    group = int((Path(__file__).resolve().parents[1] / ".run" / "torchserve.pid").read_text())
    (java,) = [p for p in psutil.process_iter(["cmdline"]) if "org.pytorch.serve" in " ".join(p.info["cmdline"] or [])
               and _group_of(p.pid) == group]
    assert _jit_seconds(java.pid) > 0
    compilers = sum("Compiler" in Path(f"/proc/{java.pid}/task/{tid}/comm").read_text()
                    for tid in os.listdir(f"/proc/{java.pid}/task"))
    start = time.perf_counter()
    with cores_by_role() as cores, httpx.Client(base_url=serving, timeout=30) as client:
        seed = 0
        while seed < 10 or time.perf_counter() - start < 2.0:  # a window of many clock ticks (below)
            assert client.post("/v1/models/mobilenet_v2:predict", content=jpeg(64, 48, seed),
                               headers={"Content-Type": "image/jpeg"}).status_code == 200
            seed += 1
    seconds = time.perf_counter() - start
    # /proc reports CPU time per thread and per process in whole clock ticks, utime and stime each truncated:
    # a delta can be off by up to 2 ticks per thread, so over a short window the compiler threads' sum may read
    # a few ticks above the process's (CI once saw 0.43 against 0.36 cores over a window of 10 requests).
    slack = 2 * (1 + compilers) / os.sysconf("SC_CLK_TCK") / seconds + 0.01  # + cores_by_role's rounding
    assert 0.0 <= cores[JIT] <= cores[JIT_OF] + slack, (cores, slack)


def test_cuda_library_rss_is_counted_only_where_mapped() -> None:
    """The bench's "CUDA libraries in the RSS": the torch wheel's CUDA mappings, nothing for a process without."""
    import os
    import subprocess

    import torch

    from loadtest.torchserve_instance import cuda_library_rss_mb

    mine = cuda_library_rss_mb(os.getpid())
    assert (mine > 10) if torch.version.cuda else (mine == 0), mine
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert cuda_library_rss_mb(sleeper.pid) == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_import_torch_floor_is_a_fresh_process_with_only_torch() -> None:
    """The bench's memory floor: a bare `import torch`, its CUDA share within it (PyPI wheel) or zero."""
    import torch

    from loadtest.torchserve_instance import import_torch_rss_mb

    floor = import_torch_rss_mb()
    assert floor["rss"] > 50, floor  # torch's own libraries are resident
    assert (0 < floor["cuda_libs"] < floor["rss"]) if torch.version.cuda else floor["cuda_libs"] == 0, floor


def test_warm_up_records_the_frontend_per_slice(serving: str) -> None:
    """`make bench`'s JIT warm-up trace: one entry per slice, the JIT share within the frontend's cores."""
    from handlers.stack import url
    from loadtest import loadgen
    from loadtest.bench import warm_up
    from tests.image_factory import jpeg

    endpoint = f"{url('TORCHSERVE_INFERENCE_PORT')}/predictions/mobilenet_v2"
    trace = warm_up(endpoint, [loadgen.Body(jpeg(64, 48, 0), "image/jpeg")], 2, 1.0, slice_s=0.5)
    assert [x["t_s"] for x in trace] == [0.5, 1.0]
    assert all(0.0 <= x["jit"] <= x["frontend"] for x in trace), trace
    assert any(x["frontend"] > 0 for x in trace), trace  # requests were served: the frontend did work


def test_interleaved_ceiling_pairs_each_served_slice_with_its_own_ceiling(serving: str) -> None:
    """`make bench`'s served / ceiling: per round every ceiling configuration, then the server; a configuration
    named twice (best batch = batch 1) runs once and both names get its numbers; ratio = sums over rounds."""
    from handlers.stack import url
    from loadtest import loadgen
    from loadtest.ceiling import interleaved
    from loadtest.torchserve_instance import build_archives
    from tests.image_factory import jpeg

    row = {"model": "mobilenet_v2", "backend": "onnx_int8", "batch": 1, "procs": 1, "threads": 1,
           "onnx_path": str(build_archives.committed_int8_graph("mobilenet_v2"))}
    endpoint = f"{url('TORCHSERVE_INFERENCE_PORT')}/predictions/mobilenet_v2"
    bodies = [loadgen.Body(jpeg(640, 480, seed), "image/jpeg") for seed in range(2)]
    run = interleaved({"best batch": row, "batch 1": dict(row)}, endpoint, bodies, 4, rounds=2, slice_s=0.5)
    assert len(run["rounds"]) == 2
    for r in run["rounds"]:
        assert r["best batch"] == r["batch 1"] > 0 and r["served"] > 0, r
    served = sum(r["served"] for r in run["rounds"])
    assert run["ratio"]["best batch"] == pytest.approx(served / sum(r["best batch"] for r in run["rounds"]))


def test_batch_1_ceiling_is_the_best_backend_at_batch_1() -> None:
    """served / ceiling (batch 1) compares with the same backend as the best batch, not whichever backend's
    batch-1 row the sweep's noise put first."""
    from loadtest.ceiling import ceiling_configs

    def row(backend: str, batch: int, rate: float) -> dict:
        return {"model": "mobilenet_v2", "backend": backend, "batch": batch, "procs": 2, "threads": 1,
                "onnx_path": "", "images_per_s": rate}

    rows = [row("onnx_int8", 8, 300.0), row("onnx_int8", 1, 250.0), row("onnx", 1, 260.0), row("onnx", 8, 280.0),
            {**row("onnx_int8", 4, 999.0), "model": "resnet50"}]
    configs = ceiling_configs(rows, "mobilenet_v2")
    assert (configs["best batch"]["backend"], configs["best batch"]["batch"]) == ("onnx_int8", 8)
    assert (configs["batch 1"]["backend"], configs["batch 1"]["batch"]) == ("onnx_int8", 1)
    assert ceiling_configs([], "mobilenet_v2") == {}
