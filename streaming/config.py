"""Settings of the Spark consumer: the bridge's own settings (topics, endpoint, batching, retries, fetcher;
bridge/config.py) plus the Spark-only ones below, read the same way (`handlers.env`, `_FILE` secrets)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.config import Config
from handlers.env import reader
from handlers.stack import stack

ROOT = Path(__file__).resolve().parent.parent
MODES = ("endpoint", "inprocess")

# name -> (default, description); streaming/README.md lists them. Relative paths are relative to the repository.
DEFAULTS: dict[str, tuple[str, str]] = {
    "STREAMING_INFERENCE": ("endpoint", "endpoint: each partition calls the KServe v2/v1 endpoint (INFERENCE_URL) "
                                        "in batches, like the bridge; inprocess: the executors run the model "
                                        "archive's graph themselves (handlers.scorer)"),
    "STREAMING_MASTER": ("local[*]", "Spark master: local[*], spark://host:7077, k8s://https://host:6443, ..."),
    "STREAMING_CHECKPOINT_DIR": (".run/spark/checkpoint", "the query's checkpoint (offsets + commits): a restart "
                                                          "resumes here; any Hadoop path (s3a://, hdfs://)"),
    "STREAMING_MAX_OFFSETS_PER_TRIGGER": ("256", "records per micro-batch at most (bounds memory and batch time)"),
    "STREAMING_TRIGGER_INTERVAL_S": ("0", "seconds between micro-batch starts (0: next batch as soon as one ends)"),
    "STREAMING_STARTING_OFFSETS": ("earliest", "where a query without a checkpoint starts: earliest or latest"),
    "STREAMING_MODEL_STORE": ("model-archive/build/model-store", "inprocess: folder of the .mar archives "
                                                                 "(`make models`)"),
    "STREAMING_KAFKA_JARS": (".cache/spark/jars", "folder of spark-sql-kafka-0-10 and its dependencies "
                                                  "(scripts/spark.sh fetch); ignored when STREAMING_JARS_PROVIDED=1"),
    "STREAMING_JARS_PROVIDED": ("0", "1: the jars are already on Spark's classpath (a cluster image, "
                                     "spark-submit --jars), do not add them"),
    "STREAMING_DRIVER_MEMORY": ("2g", "spark.driver.memory (local mode: the executors live in the driver)"),
    "STREAMING_KAFKA_OPTIONS": ("{}", "JSON object of extra Kafka client settings for both source and sink, "
                                      "without the kafka. prefix (mutual TLS keystores, OAUTHBEARER, ...)"),
    "STREAMING_RESTART_BACKOFF_MAX_S": ("60", "a failed query is restarted from its checkpoint after a backoff "
                                              "doubling up to this (seconds)"),
    "STREAMING_UI_HOST": ("", "address of the Spark UI and driver (default: $STACK_HOST; 0.0.0.0 in a pod)"),
    "STREAMING_UI_PORT": ("", "Spark UI port (default: $SPARK_UI_PORT from stack.env)"),
}


def _path(value: str) -> str:
    """A local path relative to the repository becomes absolute; URIs (s3a://, hdfs://, file:) stay as given."""
    if "://" in value or value.startswith("file:") or os.path.isabs(value):
        return value
    return str(ROOT / value)


@dataclass(frozen=True)
class StreamingSettings:
    """Everything a query needs; pickled into the executors with the transformation."""

    bridge: Config
    inference: str
    master: str
    checkpoint_dir: str
    max_offsets_per_trigger: int
    trigger_interval_s: float
    starting_offsets: str
    model_store: str
    kafka_jars: str
    jars_provided: bool
    driver_memory: str
    kafka_options: dict[str, str]
    restart_backoff_max_s: float
    ui_host: str
    ui_port: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StreamingSettings:
        e = reader(environ, DEFAULTS)
        s = stack()
        mode = e("STREAMING_INFERENCE").lower()
        if mode not in MODES:
            raise ValueError(f"STREAMING_INFERENCE must be one of {', '.join(MODES)}, not {mode!r}")
        options = json.loads(e("STREAMING_KAFKA_OPTIONS"))
        if not isinstance(options, dict):
            raise ValueError("STREAMING_KAFKA_OPTIONS must be a JSON object")
        starting = e("STREAMING_STARTING_OFFSETS")
        if starting not in ("earliest", "latest"):
            raise ValueError(f"STREAMING_STARTING_OFFSETS must be earliest or latest, not {starting!r}")
        return cls(
            bridge=Config.from_env(None if environ is None else dict(environ)),
            inference=mode,
            master=e("STREAMING_MASTER"),
            checkpoint_dir=_path(e("STREAMING_CHECKPOINT_DIR")),
            max_offsets_per_trigger=max(1, int(e("STREAMING_MAX_OFFSETS_PER_TRIGGER"))),
            trigger_interval_s=max(0.0, float(e("STREAMING_TRIGGER_INTERVAL_S"))),
            starting_offsets=starting,
            model_store=_path(e("STREAMING_MODEL_STORE")),
            kafka_jars=_path(e("STREAMING_KAFKA_JARS")),
            jars_provided=e("STREAMING_JARS_PROVIDED") in ("1", "true", "yes"),
            driver_memory=e("STREAMING_DRIVER_MEMORY"),
            kafka_options={str(k): str(v) for k, v in options.items()},
            restart_backoff_max_s=float(e("STREAMING_RESTART_BACKOFF_MAX_S")),
            ui_host=e("STREAMING_UI_HOST") or s["STACK_HOST"],
            ui_port=int(e("STREAMING_UI_PORT") or s.get("SPARK_UI_PORT", "4040")),
        )
