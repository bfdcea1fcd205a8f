"""The load test's SLO gate, separate from Locust so it can be tested both ways without a server.

Defaults (loadtest/README.md explains them): p95 <= 300 ms, the reference system's per-image claim,
which leaves room for the mix's 12 MP images and the load generator sharing the CPU; error rate <= 1 %.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Slo:
    p95_ms: float = 300.0
    max_error_rate: float = 0.01
    min_requests: int = 1  # a run that sent nothing proves nothing

    @classmethod
    def from_env(cls) -> Slo:
        return cls(
            p95_ms=float(os.environ.get("LOADTEST_P95_MS", cls.p95_ms)),
            max_error_rate=float(os.environ.get("LOADTEST_MAX_ERROR_RATE", cls.max_error_rate)),
            min_requests=int(os.environ.get("LOADTEST_MIN_REQUESTS", cls.min_requests)),
        )


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str


def check(slo: Slo, requests: int, failures: int, p95_ms: float | None) -> Verdict:
    """Pass only if enough requests ran, p95 is within the limit and errors are within the budget."""
    problems = []
    if requests < slo.min_requests:
        problems.append(f"only {requests} requests (need >= {slo.min_requests})")
    rate = failures / requests if requests else 1.0
    if rate > slo.max_error_rate:
        problems.append(f"error rate {rate:.2%} > {slo.max_error_rate:.2%}")
    if p95_ms is None or p95_ms > slo.p95_ms:
        problems.append(f"p95 {p95_ms} ms > {slo.p95_ms:.0f} ms")
    summary = f"{requests} requests, {failures} failed ({rate:.2%}), p95 {p95_ms} ms"
    if problems:
        return Verdict(False, f"SLO BROKEN: {summary}: " + "; ".join(problems))
    return Verdict(True, f"SLO met: {summary} (p95 <= {slo.p95_ms:.0f} ms, errors <= {slo.max_error_rate:.2%})")
