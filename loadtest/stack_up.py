"""Is `make up`'s stack there? The benches that drive it (`make bench-spark`, `make bench-references`, and
`make bench` with `--if-running`) skip, or stop, naming what is missing."""

from __future__ import annotations

import httpx

from handlers.stack import stack, url


def missing(bridge: bool = False, object_store: bool = False) -> str | None:
    """Why TorchServe and the broker (and, when asked, the bridge and the object store) are not all there, or None."""
    from confluent_kafka.admin import AdminClient

    try:
        if httpx.get(f"{url('TORCHSERVE_INFERENCE_PORT')}/ping", timeout=3).status_code != 200:
            return "TorchServe is not ready"
    except httpx.HTTPError:
        return "TorchServe is not running"
    try:
        AdminClient({"bootstrap.servers": f"{stack()['STACK_HOST']}:{stack()['KAFKA_PORT']}"}).list_topics(timeout=5)
    except Exception:  # KafkaException, or librdkafka's own errors: the broker does not answer
        return "the Kafka broker is not running"
    if bridge:
        try:
            httpx.get(url("BRIDGE_PORT") + "/readyz", timeout=3).raise_for_status()
        except httpx.HTTPError:
            return "the bridge is not ready"
    if object_store:
        from demo.s3 import bucket
        from handlers.fetch import FetchSettings, s3_client

        settings = FetchSettings.from_env()
        if not settings.s3_endpoint_url:
            return "no object store configured (FETCH_S3_ENDPOINT_URL; `scripts/s3.sh run` sets it)"
        try:
            s3_client(settings).head_bucket(Bucket=bucket())
        except Exception as exc:  # botocore's connection and client errors alike: the store is not usable
            return f"the object store is not reachable ({type(exc).__name__})"
    return None
