"""Locust load test of the moderation service: KServe v2 and v1 HTTP users and a Kafka end-to-end user.

`make loadtest` runs it headless (see loadtest/README.md). Users:
- V2User / V1User: one request = one image from a realistic mix of sizes (thumbnail .. 12 MP phone photo,
  all under MODERATION_MAX_IMAGE_BYTES / MAX_PIXELS), base64 in JSON, as KServe clients send it;
- KafkaUser (only with LOADTEST_KAFKA=1, needs `make up` with the bridge): produces raw JPEGs to
  `image_data` keyed by a fresh id and reports a custom "kafka" event when the matching prediction
  (or DLQ record) arrives, so the latency is end to end through broker, bridge, inference and back.
Open loop: LOADTEST_RPS_PER_USER paces every user at a constant rate (`constant_throughput`), so the
offered load is users x rate whatever the latency. SLO gate at the end: p95 and error rate
(LOADTEST_P95_MS, LOADTEST_MAX_ERROR_RATE) -> exit code 1 when broken.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

import gevent
from locust import HttpUser, User, between, constant_throughput, events, task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.envelopes import predictions_from, v1_request, v2_request  # noqa: E402
from loadtest.slo import Slo, check  # noqa: E402
from tests.image_factory import jpeg  # noqa: E402

MODEL = os.environ.get("LOADTEST_MODEL", "mobilenet_v2")
RPS_PER_USER = float(os.environ.get("LOADTEST_RPS_PER_USER", "0"))  # 0 = closed loop, as fast as answered
# (width, height, weight): mostly phone/web photos, some thumbnails, a few large camera images.
DEFAULT_SIZES = "160x120:2,640x480:5,1280x960:2,4000x3000:1"


def size_mix(spec: str) -> list[tuple[int, int, int]]:
    """"WxH:weight,..." (env LOADTEST_SIZES) -> [(width, height, weight)]."""
    out = []
    for item in spec.split(","):
        size, _, weight = item.strip().partition(":")
        w, _, h = size.partition("x")
        out.append((int(w), int(h), int(weight or 1)))
    return out


def _images() -> list[bytes]:
    out = []
    for w, h, weight in size_mix(os.environ.get("LOADTEST_SIZES", DEFAULT_SIZES)):
        out += [jpeg(w, h, seed) for seed in range(weight)]
    return out


IMAGES = _images()


def _wait():  # noqa: ANN202 - locust wait_time callable
    return constant_throughput(RPS_PER_USER) if RPS_PER_USER > 0 else between(0, 0)


class _Moderation(HttpUser):
    abstract = True
    wait_time = _wait()

    def _check(self, resp) -> None:  # noqa: ANN001 - locust response context manager
        if resp.status_code != 200:
            resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
            return
        try:
            preds = predictions_from(resp.json())
        except (ValueError, KeyError, TypeError) as exc:
            resp.failure(f"bad response: {exc}")
            return
        if len(preds) != 1 or preds[0].label not in ("benign", "harmful"):
            resp.failure(f"unexpected predictions: {preds}")


class V2User(_Moderation):
    """Open Inference Protocol v2, one BYTES image per request."""

    weight = 3

    @task
    def infer(self) -> None:
        body = v2_request([random.choice(IMAGES)], request_id=uuid.uuid4().hex)
        with self.client.post(f"/v2/models/{MODEL}/infer", json=body, name="v2 infer", catch_response=True) as r:
            self._check(r)


class V1User(_Moderation):
    """KServe v1 `instances` with base64, one image per request."""

    weight = 1

    @task
    def predict(self) -> None:
        with self.client.post(f"/v1/models/{MODEL}:predict", json=v1_request([random.choice(IMAGES)]),
                              name="v1 predict", catch_response=True) as r:
            self._check(r)


class _Predictions:
    """One background reader of image_predictions + DLQ shared by all Kafka users, matching ids to waiters."""

    def __init__(self) -> None:
        from bridge.config import Config
        from bridge.consume import open_consumer, rows

        self.cfg = Config.from_env()
        self._consumer = open_consumer(self.cfg, [self.cfg.output_topic, self.cfg.dlq_topic], from_beginning=False)
        self._rows = rows
        self._waiting: dict[str, tuple[threading.Event, list]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def expect(self, image_id: str) -> tuple[threading.Event, list]:
        slot = (threading.Event(), [])
        with self._lock:
            self._waiting[image_id] = slot
        return slot

    def forget(self, image_id: str) -> None:
        with self._lock:
            self._waiting.pop(image_id, None)

    def _run(self) -> None:
        # Under Locust every thread is a greenlet: never block in librdkafka (wait_s=0), yield to the hub
        # instead. A 2 ms idle sleep bounds the added latency; a busy stream yields after every record too.
        for row in self._rows(self._consumer, self.cfg.dlq_topic, None, wait_s=0):
            if row is None:
                gevent.sleep(0.002)
                continue
            gevent.sleep(0)
            with self._lock:
                slot = self._waiting.pop(row.id, None)
            if slot is not None:
                slot[1].append(row)
                slot[0].set()


_PREDICTIONS: _Predictions | None = None
_PRED_LOCK = threading.Lock()


class KafkaUser(User):
    """Produce one image to image_data; the request 'succeeds' when its prediction is on image_predictions."""

    abstract = os.environ.get("LOADTEST_KAFKA") != "1"  # needs the broker + bridge of `make up`
    wait_time = _wait()
    timeout_s = float(os.environ.get("LOADTEST_KAFKA_TIMEOUT_S", "30"))

    def on_start(self) -> None:
        global _PREDICTIONS
        from confluent_kafka import Producer

        with _PRED_LOCK:
            if _PREDICTIONS is None:
                _PREDICTIONS = _Predictions()
        self.predictions = _PREDICTIONS
        self.producer = Producer(self.predictions.cfg.producer_settings())

    def on_stop(self) -> None:
        self.producer.flush(5)

    @task
    def produce(self) -> None:
        image_id = f"locust-{uuid.uuid4().hex}"
        image = random.choice(IMAGES)
        done, box = self.predictions.expect(image_id)
        t0 = time.perf_counter()
        self.producer.produce(self.predictions.cfg.input_topic, key=image_id.encode(), value=image,
                              headers=[("content-type", b"image/jpeg")])
        self.producer.poll(0)  # no flush: it would block the gevent hub; librdkafka sends within linger.ms
        ok = done.wait(self.timeout_s)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        exc = None
        if not ok:
            self.predictions.forget(image_id)
            exc = TimeoutError(f"no prediction for {image_id} within {self.timeout_s}s")
        elif box[0].dlq:
            exc = RuntimeError(f"sent to DLQ: {box[0].reason} {box[0].error}")
        events.request.fire(request_type="kafka", name="image_data -> image_predictions", response_time=elapsed_ms,
                            response_length=len(image), exception=exc, context={})


REQUEST_LOG = os.environ.get("LOADTEST_REQUEST_LOG", "")


@events.init.add_listener
def _request_log(environment, **_kw) -> None:  # noqa: ANN001 - locust hook signature
    """LOADTEST_REQUEST_LOG=FILE: one CSV line per request (epoch end time, ms, ok), so a run can be cut into
    windows afterwards (`make e2e-scale`: throughput and p95 before and after a scale-out)."""
    if not REQUEST_LOG:
        return
    out = open(REQUEST_LOG, "a", buffering=1)  # noqa: SIM115 - open for the whole run, closed at quit

    def record(request_type, name, response_time, exception=None, **_rest) -> None:  # noqa: ANN001
        out.write(f"{time.time():.3f},{response_time:.1f},{0 if exception else 1}\n")

    environment.events.request.add_listener(record)
    environment.events.quitting.add_listener(lambda **_: out.close())


@events.quitting.add_listener
def _slo_gate(environment, **_kw) -> None:  # noqa: ANN001 - locust hook signature
    """Turn the run's totals into the process exit code: 1 when p95 or the error rate breaks the SLO."""
    total = environment.stats.total
    verdict = check(Slo.from_env(), total.num_requests, total.num_failures, total.get_response_time_percentile(0.95))
    print(verdict.message, flush=True)
    if not verdict.ok:
        environment.process_exit_code = 1
