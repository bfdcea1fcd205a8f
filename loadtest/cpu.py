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
)
LOADGEN = "load generator (bench process)"


def _role(proc: psutil.Process) -> str | None:
    if proc.pid == os.getpid():
        return LOADGEN
    cmd = " ".join(proc.info["cmdline"] or [])
    return next((role for role, needle in ROLES if needle in cmd), None)


def _times() -> dict[int, tuple[str, float]]:
    out = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            role = _role(proc)
            if role is not None:
                t = proc.cpu_times()
                out[proc.pid] = (role, t.user + t.system)
        except psutil.Error:
            continue
    return out


@contextmanager
def cores_by_role() -> Iterator[dict[str, float]]:
    """`with cores_by_role() as cores: ...` fills `cores` with role -> average cores busy over the block."""
    cores: dict[str, float] = {}
    before, t0 = _times(), time.perf_counter()
    yield cores
    after, seconds = _times(), time.perf_counter() - t0
    for pid, (role, cpu) in after.items():
        if pid in before:
            cores[role] = cores.get(role, 0.0) + (cpu - before[pid][1]) / seconds
    cores.update({role: round(value, 2) for role, value in cores.items()})
