"""Where the CPU goes during a load point: cores used per role (TorchServe workers, Java frontend, broker,
bridge, gateway, this load generator), from psutil CPU times before and after.

On 2 shared cores the ratios of `make bench` (served / ceiling, bridge / direct) are decided by who else
burns CPU; this puts that in the results instead of in a one-off script.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

# role -> substring of the command line (first match wins; order matters: the worker runs python too)
ROLES: tuple[tuple[str, str], ...] = (
    ("torchserve workers", "model_service_worker"),
    ("torchserve frontend", "org.pytorch.serve"),
    ("kafka broker", "kafka.Kafka"),
    ("bridge", "-m bridge"),
    ("gateway", "-m gateway"),
    ("object store", "versitygw"),
    ("spark python workers", "pyspark.daemon"),
    ("spark JVM", "org.apache.spark"),
)
MACHINE = "machine (every process)"
LOADGEN = "load generator (bench process)"
# A fresh JVM spends its first ~35 s under load compiling hot paths (C1/C2 "CompilerThread"s); counted apart
# so a table shows whether the frontend was measured warm.
JIT = "frontend JIT compiler (of frontend)"
JIT_OF = "torchserve frontend"


def _jit_seconds(pid: int) -> float:
    """CPU seconds of a JVM's compiler threads (Linux /proc: thread names are not in psutil).

    Whole clock ticks per thread, like the process's own figure: over a window of a few ticks the two can
    disagree by a couple of ticks per thread, which is why the bench's slices last seconds."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if "Compiler" not in f.read():
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        except OSError:
            continue
    return total / tick


def _role(proc: psutil.Process) -> str | None:
    if proc.pid == os.getpid():
        return LOADGEN
    cmd = " ".join(proc.info["cmdline"] or [])
    return next((role for role, needle in ROLES if needle in cmd), None)


def _times() -> dict[tuple[int, str], float]:
    """CPU seconds so far per (pid, role); the frontend's JIT threads also count on their own."""
    out = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            role = _role(proc)
            if role is not None:
                t = proc.cpu_times()
                out[proc.pid, role] = t.user + t.system
                if role == JIT_OF:
                    out[proc.pid, JIT] = _jit_seconds(proc.pid)
        except psutil.Error:
            continue
    return out


def _busy() -> float:
    """CPU seconds the whole machine spent busy so far (every core, every process, the kernel)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


@contextmanager
def cores_by_role() -> Iterator[dict[str, float]]:
    """`with cores_by_role() as cores: ...` fills `cores` with role -> average cores busy over the block."""
    cores: dict[str, float] = {}
    before, machine, t0 = _times(), _busy(), time.perf_counter()
    yield cores
    after, seconds = _times(), time.perf_counter() - t0
    for key, cpu in after.items():
        if key in before:
            cores[key[1]] = cores.get(key[1], 0.0) + (cpu - before[key]) / seconds
    cores[MACHINE] = (_busy() - machine) / seconds  # the roles' sum falls short of it by whatever else ran
    cores.update({role: round(value, 2) for role, value in cores.items()})


CGROUP_CPU = "/sys/fs/cgroup/cpu"  # cgroup v1's cpu controller (this machine's kind; kubelet's limits use it too)


def process_group(leader: int) -> list[int]:
    """The processes of `leader`'s process group: a service the stack scripts start in a session of its own
    (TorchServe: the frontend and its workers), and not a cluster's pods that run the same programs."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == leader:
                out.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def _cpu_cgroup(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "cpu" in controllers.split(","):
                return path
    return "/"


@contextmanager
def cpu_limit(pids: list[int], cores: float, name: str = "image-moderation-bench") -> Iterator[list[int]]:
    """Runs the block with `pids` (and whatever they start meanwhile) under a CFS quota of `cores`: the mechanism
    of a Kubernetes CPU limit. On a cluster the model server's pods have their own CPU and the bridge its own; on
    one shared machine this gives the model server a fixed share, so a bench can tell what a change costs the
    serving pods from what it costs the pods beside them. Needs root and cgroup v1's cpu controller; the
    processes go back to their own cgroups afterwards."""
    if not os.path.exists(os.path.join(CGROUP_CPU, "cgroup.procs")):
        raise RuntimeError(f"a CPU limit needs cgroup v1's cpu controller at {CGROUP_CPU}")
    if not pids:
        raise RuntimeError("no process to limit")
    origin = {pid: _cpu_cgroup(pid) for pid in pids}
    group = os.path.join(CGROUP_CPU, name)
    os.makedirs(group, exist_ok=True)
    with open(os.path.join(group, "cpu.cfs_period_us"), "w") as f:
        f.write("100000")
    with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as f:
        f.write(str(int(cores * 100000)))
    try:
        for pid in pids:
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        yield pids
    finally:
        with open(os.path.join(group, "cgroup.procs")) as f:
            inside = [int(line) for line in f if line.strip()]
        home = origin[pids[0]]
        for pid in inside:  # children started meanwhile go where their first parent came from
            try:
                with open(os.path.join(CGROUP_CPU, origin.get(pid, home).lstrip("/"), "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:  # exited meanwhile
                continue
        os.rmdir(group)
