"""The Grafana dashboard shipped by the chart, checked statically and live.

Schema: the rendered dashboard must pass Grafana's dashboard schema as published in the Grafana Foundation SDK
(Go module github.com/grafana/grafana-foundation-sdk/go, pinned in monitoring/dashboard-schema/go.mod;
Apache-2.0, generated from Grafana's dashboard kind and panel/query plugin schemas). Grafana itself is AGPL and
not used. The validator is built once with the machine's Go (monitoring/dashboard-schema/build.sh) and is shown
to reject broken copies, so a silently lenient validator cannot pass for a check.

Live: a real Prometheus (Debian package) scrapes the local stack (TorchServe metrics, the Kafka bridge) with
job names and relabelings taken from the chart's PodMonitor/ServiceMonitor and evaluates the chart's
recording rules; after real traffic (KServe v2 requests to both models, images through Kafka, one bad image
each way) every dashboard query and every recording rule must return a finite value.

Panels whose description starts with "Cluster-only:" read kube-state-metrics / cAdvisor series (kube_*,
container_*) that exist only in a cluster; they are listed, checked to use nothing else, and not queried
locally. The panel "Process CPU / memory" covers CPU and memory locally from the services' own metrics.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from handlers.stack import stack, url
from tests import k8s_support as k
from tests.conftest import DEFAULT_RUNTIME, StackControl

CLUSTER_ONLY_METRIC = re.compile(r"\b(kube_[a-z_]+|container_[a-z_]+)\b")
LIVE_DEADLINE_S = 150


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return k.load_docs(k.helm_template())


@pytest.fixture(scope="module")
def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return k.dashboard_of(docs)


def targets(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def cluster_only(panel: dict[str, Any]) -> bool:
    """Marked in the description: Grafana's panel schema has no tags (an unknown field it would drop)."""
    return panel.get("description", "").startswith("Cluster-only:")


def test_dashboard_configmap_is_picked_up_by_the_sidecar(docs: list[dict[str, Any]]) -> None:
    (cm,) = [d for d in k.find(docs, "ConfigMap") if d["metadata"]["name"] == "image-moderation-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dashboard_covers_the_required_views(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(e for p in dashboard["panels"] for e in targets(p))
    for needle in (
        "ts_inference_requests",
        "p50",
        "p95",
        "p99",
        "queue_latency",
        "harmful",
        "bridge_dlq",
        "consumer_lag",
        "replicas",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "process_cpu_seconds_total",
    ):
        assert needle in exprs, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(targets(p) for p in dashboard["panels"])


def test_cluster_only_panels_are_marked_and_nothing_else_needs_a_cluster(dashboard: dict[str, Any]) -> None:
    marked = [p["title"] for p in dashboard["panels"] if cluster_only(p)]
    assert marked == ["Replicas: HPA current / desired", "CPU by pod (cores)", "Memory by pod (working set)"]
    for p in dashboard["panels"]:
        uses_cluster = any(CLUSTER_ONLY_METRIC.search(e) for e in targets(p))
        assert uses_cluster == cluster_only(p), p["title"]


# -------------------------------------------------------------------------------------------- schema

SCHEMA_DIR = k.ROOT / "monitoring" / "dashboard-schema"
SCHEMA_PIN = re.search(r"^require (\S+ v\S+)$", (SCHEMA_DIR / "go.mod").read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def schema_validator() -> str:
    """The validator binary, built once per source or pin change (cached outside the clone)."""
    res = k.run([str(SCHEMA_DIR / "build.sh")])
    if res.returncode != 0:
        pytest.fail(f"building the dashboard schema validator failed:\n{res.stderr}")
    return res.stdout.strip().splitlines()[-1]


def validate_schema(validator: str, dashboard: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(dashboard, indent=1))
    return k.run([validator, str(path)])


def test_dashboard_matches_grafanas_schema(schema_validator: str, dashboard: dict[str, Any], tmp_path: Path) -> None:
    """The dashboard as rendered by the chart (job names of this release), against the pinned schema."""
    res = validate_schema(schema_validator, dashboard, tmp_path / "dashboard.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"valid against {SCHEMA_PIN}" in res.stdout, res.stdout


def _panel(d: dict[str, Any], i: int) -> dict[str, Any]:
    return d["panels"][i]


# name -> (how the copy is broken, a line the validator must print for it)
BROKEN: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "unknown panel field": (
        lambda d: _panel(d, 0).update(tags=["cluster-only"]),
        "panels[0]: unexpected field 'tags' (panel ",
    ),
    "gridPos of the wrong type": (
        lambda d: _panel(d, 1).update(gridPos="full-width"),
        "panels[1].gridPos: json: cannot unmarshal string",
    ),
    "gridPos wider than the grid": (
        lambda d: _panel(d, 1)["gridPos"].update(w=30),
        "panels[1].gridPos.w: must be <= 24",
    ),
    "required gridPos field missing": (
        lambda d: _panel(d, 1)["gridPos"].pop("h"),
        "panels[1].gridPos.h: required field is missing from input",
    ),
    "required dashboard field missing": (
        lambda d: d.pop("schemaVersion"),
        "schemaVersion: required field is missing from input",
    ),
    "panel type missing": (lambda d: _panel(d, 2).pop("type"), "panels[2]: discriminator field 'type' not found"),
    "panel plugin option of the wrong type": (
        lambda d: _panel(d, 0)["options"]["legend"].update(showLegend="yes"),
        "panels[0].options.legend.showLegend: json: cannot unmarshal string into Go value of type bool",
    ),
    "required panel plugin option missing": (
        lambda d: _panel(d, 0)["options"].pop("tooltip"),
        "panels[0].options.tooltip: required field is missing",
    ),
    "unknown Prometheus query field": (
        lambda d: _panel(d, 0)["targets"][0].update(exp="up"),
        "panels[0].targets[0]: unexpected field 'exp'",
    ),
    "unknown fieldConfig field": (
        lambda d: _panel(d, 0)["fieldConfig"]["defaults"].update(units="s"),
        "panels[0].fieldConfig.defaults: unexpected field 'units'",
    ),
    "panel plugin without a schema": (
        lambda d: _panel(d, 4).update(type="graph"),
        'panels[4].type: panel plugin "graph" has no schema here',
    ),
    "variable refresh of the wrong type": (
        lambda d: d["templating"]["list"][1].update(refresh="onload"),
        "templating.list[1].refresh: json: cannot unmarshal string",
    ),
}


@pytest.mark.parametrize("defect", sorted(BROKEN))
def test_dashboard_schema_check_rejects_a_broken_copy(
    schema_validator: str, dashboard: dict[str, Any], tmp_path: Path, defect: str
) -> None:
    """Each defect alone fails the check with one line naming its JSON path (and the panel's title)."""
    breaks, expected = BROKEN[defect]
    broken = copy.deepcopy(dashboard)
    breaks(broken)
    res = validate_schema(schema_validator, broken, tmp_path / "broken.json")
    assert res.returncode == 1, res.stdout + res.stderr
    problems = [line.strip() for line in res.stdout.splitlines()[1:]]
    assert len(problems) == 1 and problems[0].startswith(expected), res.stdout


# ---------------------------------------------------------------------------------------------- live


def _run(script: str, action: str) -> None:
    subprocess.run([str(k.ROOT / "scripts" / script), action], check=True)


def _up(health_url: str) -> bool:
    try:
        return httpx.get(health_url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def kafka_bridge(stack_control: StackControl) -> Iterator[str]:
    """Kafka + the bridge on the stack.env ports (reused when `make up` runs them), stopped if started here."""
    stack_control.ensure(DEFAULT_RUNTIME)  # the bridge follows the runtime that runs (.run/runtime)
    started = []
    bridge_health = f"{url('BRIDGE_PORT')}/readyz"
    if not _up(bridge_health):
        status = subprocess.run([str(k.ROOT / "scripts" / "kafka.sh"), "status"], capture_output=True, text=True)
        if "running" not in status.stdout or "not" in status.stdout:
            _run("kafka.sh", "start")
            started.append("kafka.sh")
        _run("bridge.sh", "start")
        started.append("bridge.sh")
    yield f"{stack()['STACK_HOST']}:{stack()['KAFKA_PORT']}"
    for script in reversed(started):
        _run(script, "stop")


def _photos() -> list[bytes]:
    from demo.samples import skimage_photos

    return [p.read_bytes() for p in skimage_photos()[:4]]


def _traffic(client: httpx.Client, producer: Producer, photos: list[bytes], round_no: int) -> None:
    """One bounded round of real traffic: each model gets a good v2 request and a bad one; Kafka gets an image
    and a record that is no image (it must end in the DLQ)."""
    photo = photos[round_no % len(photos)]
    for model in ("mobilenet_v2", "resnet50"):
        body = {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(photo).decode()]}]
        }
        bad = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%not-base64%%"]}]}
        # Only the metrics matter here (the serving tests own the answers); a shared stack may be busy (503).
        client.post(f"/v2/models/{model}/infer", json=body)
        client.post(f"/v2/models/{model}/infer", json=bad)
    topic = "image_data"
    producer.produce(topic, key=str(uuid.uuid4()).encode(), value=photo, headers=[("content-type", b"image/jpeg")])
    producer.produce(
        topic, key=str(uuid.uuid4()).encode(), value=b"plain text, no image", headers=[("content-type", b"image/jpeg")]
    )
    producer.flush(10)


def test_every_panel_and_recording_rule_returns_data_live(
    serving: str, kafka_bridge: str, docs: list[dict[str, Any]], dashboard: dict[str, Any], tmp_path: Path
) -> None:
    records = k.recording_rules(docs)
    panel_queries = k.panel_queries(dashboard, skip=cluster_only)
    skipped = [p["title"] for p in dashboard["panels"] if cluster_only(p)]
    photos = _photos()
    producer = Producer({"bootstrap.servers": kafka_bridge})
    with (
        k.prometheus(tmp_path / "prometheus", docs, interval="1s") as prom,
        httpx.Client(base_url=serving, timeout=120) as client,
    ):
        deadline = time.monotonic() + LIVE_DEADLINE_S
        round_no = 0
        while True:
            _traffic(client, producer, photos, round_no)
            round_no += 1
            missing = k.without_data(prom, docs, dashboard, skip=cluster_only)
            if not missing:
                break
            if time.monotonic() > deadline:
                targets_state = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
                health = {t["labels"]["job"]: (t["health"], t.get("lastError")) for t in targets_state}
                pytest.fail(f"no data after {LIVE_DEADLINE_S}s for: {missing}\ntargets: {health}")
            time.sleep(2)
    print(
        f"live check: {len(records)} recording rules, {len(panel_queries)} panel queries returned data after "
        f"{round_no} traffic rounds; cluster-only panels not queried locally: {skipped}"
    )
