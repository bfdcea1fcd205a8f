"""Fixtures for the end-to-end checks on the local cluster (`make e2e`).

They talk to the cluster only as a user would: `kubectl` with `.run/cluster/kubeconfig`, `kubectl
port-forward` to 127.0.0.1, and pods that call Services and pod IPs from inside the pod network. The
local serving stack of `tests/conftest.py` (TorchServe + gateway on loopback) is the reference the
cluster's answers are compared with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from handlers.registry import MODEL_NAMES
from tests.conftest import serving, stack_control  # noqa: F401  (the local stack, the reference)
from tests.kafka_support import Topics

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = os.environ.get("KUBECONFIG", str(ROOT / ".run" / "cluster" / "kubeconfig"))
CLUSTER_BIN = Path(os.environ.get("CLUSTER_BIN", Path.home() / ".cache" / "image-moderation" / "cluster" / "bin"))
KUBECTL = str(CLUSTER_BIN / "kubectl")
HELM = str(ROOT / ".cache" / "tools" / "bin" / "helm")
NAMESPACE = os.environ.get("NAMESPACE", "image-moderation")
RELEASE = os.environ.get("RELEASE", "image-moderation")
MODELS = tuple(MODEL_NAMES)
KAFKA_NAMESPACE = os.environ.get("KAFKA_NAMESPACE", "kafka")
# The topics and consumer group of the chart's bridge (its defaults; ci/local-cluster-values.yaml keeps them).
BRIDGE_TOPICS = Topics("image_data", "image_predictions", "image_data.dlq", "image-moderation-bridge")


def cluster_pin(name: str) -> str:
    """A version pinned in cluster/env.sh (the one place the cluster's versions are set)."""
    text = (ROOT / "cluster" / "env.sh").read_text()
    return re.search(rf'^{name}="\$\{{{name}:-([^}}]+)\}}"', text, re.M).group(1)


def kubectl(*args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> str:
    """Run kubectl against the local cluster and return its stdout."""
    done = subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                          env={**os.environ, "KUBECONFIG": KUBECONFIG})
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def kube_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def isvc_name(model: str) -> str:
    return f"{RELEASE}-{model.replace('_', '-')}"


def delete_predictor_pod(model: str) -> tuple[float, int, int]:
    """Delete the model's predictor pod as a rollout or scale-in does (graceful) and wait until it is gone:
    (seconds it took, its preStop sleep, its grace period). The InferenceService is Ready again on return."""
    pods = kube_json("-n", NAMESPACE, "get", "pods", "-l", f"serving.kserve.io/inferenceservice={isvc_name(model)}")
    (pod,) = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
    spec = pod["spec"]
    sleep = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    t0 = time.monotonic()
    kubectl("-n", NAMESPACE, "delete", "pod", pod["metadata"]["name"], "--wait=true", timeout=120)
    took = time.monotonic() - t0
    kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"inferenceservice/{isvc_name(model)}",
            "--timeout=300s", timeout=320)
    return took, sleep, spec["terminationGracePeriodSeconds"]


def restart_counts(namespace: str = NAMESPACE) -> dict[str, int]:
    pods = kube_json("-n", namespace, "get", "pods")["items"]
    return {p["metadata"]["name"]: sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", []))
            for p in pods}


@contextmanager
def port_forward(target: str, remote_port: int, namespace: str = NAMESPACE) -> Iterator[str]:
    """`kubectl port-forward` on a free loopback port; yields its base URL."""
    proc = subprocess.Popen([KUBECTL, "-n", namespace, "port-forward", "--address", "127.0.0.1", target,
                             f":{remote_port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KUBECONFIG": KUBECONFIG})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            proc.kill()
            raise AssertionError(f"port-forward {target} failed: {line} {proc.stderr.read() if proc.stderr else ''}")
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def cluster_ready() -> None:
    """The cluster answers and the release's InferenceServices are Ready (`make cluster-deploy`)."""
    try:
        kubectl("get", "--raw", "/readyz", timeout=10)
    except (AssertionError, FileNotFoundError) as exc:
        pytest.fail(f"no local cluster ({exc}): run `make cluster-up cluster-deploy` or `make e2e`")
    kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "inferenceservice", "--all", "--timeout=600s",
            timeout=620)


@pytest.fixture(scope="session")
def predictor_urls(cluster_ready: None) -> Iterator[dict[str, str]]:
    """model -> base URL of its predictor Service, port-forwarded to 127.0.0.1."""
    with port_forward(f"svc/{isvc_name(MODELS[0])}-predictor", 80) as a, \
            port_forward(f"svc/{isvc_name(MODELS[1])}-predictor", 80) as b:
        yield {MODELS[0]: a, MODELS[1]: b}


@pytest.fixture(scope="session")
def kafka_bootstrap(cluster_ready: None) -> str:
    """The in-cluster broker as the host reaches it (node IP + NodePort; cluster/kafka.sh bootstrap)."""
    out = subprocess.run([str(ROOT / "cluster" / "kafka.sh"), "bootstrap"], capture_output=True, text=True,
                         check=True).stdout.strip()
    kubectl("-n", KAFKA_NAMESPACE, "rollout", "status", "statefulset/kafka", "--timeout=300s", timeout=320)
    return out


def bridge_deployment() -> str:
    return f"{RELEASE}-bridge"


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 1.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def http_client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=120)


@pytest.fixture
def client(serving: str) -> Iterator[httpx.Client]:  # noqa: F811
    """The local stack on its default runtime (TorchServe + gateway): what the cluster's answers must equal."""
    with httpx.Client(base_url=serving, timeout=120) as c:
        yield c
