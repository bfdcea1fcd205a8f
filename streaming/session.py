"""The SparkSession both jobs use: the Kafka jars from the cache (no download at run time), the UI and driver on
loopback in local mode, the executors on this virtualenv's Python, a quiet JVM log."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from streaming.config import StreamingSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOG4J = Path(__file__).resolve().parent / "log4j2.properties"


def kafka_jars(settings: StreamingSettings) -> list[str]:
    """spark-sql-kafka-0-10 and its dependencies (scripts/spark.sh fetch), unless the classpath has them."""
    if settings.jars_provided:
        return []
    jars = sorted(str(p) for p in Path(settings.kafka_jars).glob("*.jar"))
    if not any("spark-sql-kafka" in Path(j).name for j in jars):
        raise FileNotFoundError(f"no spark-sql-kafka jar in {settings.kafka_jars}: run `make spark-fetch` "
                                "(or set STREAMING_JARS_PROVIDED=1 when Spark's classpath has it)")
    return jars


def session(settings: StreamingSettings, app_name: str, *, kafka: bool = True,
            console_progress: bool = False) -> SparkSession:
    """`kafka`: with the Kafka jars (the streaming query); `console_progress`: Spark's stage progress bar on the
    console (the backfill's long job), else progress is the consumer's own per-micro-batch log line."""
    from pyspark.sql import SparkSession

    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines are per callback, not for people

    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # started by spark-submit: its --master and --conf rule
    local = settings.master.startswith("local") and not submitted
    if local:  # the UI binds to SPARK_LOCAL_IP (else every interface)
        os.environ.setdefault("SPARK_LOCAL_IP", settings.ui_host)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder
    if not submitted:
        builder = builder.master(settings.master)
    builder = (
        builder.appName(app_name)
        .config("spark.driver.memory", settings.driver_memory)
        .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile=file:{LOG4J}")
        .config("spark.ui.port", str(settings.ui_port))
        .config("spark.ui.showConsoleProgress", str(console_progress).lower())
        # streaming queries cannot use adaptive execution (Spark warns and turns it off per query)
        .config("spark.sql.adaptive.enabled", str(not kafka).lower())
        .config("spark.port.maxRetries", "4")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.python.worker.reuse", "true")
        # a backfill names thousands of files: list them in the driver, not as a Spark job with a task per path
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "1000000")
        # mapInArrow's record batches: at most a micro-batch's partition worth of images each
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "256")
        .config("spark.sql.execution.arrow.useLargeVarTypes", "false")
        # SASL passwords and keys live in Kafka options: kept out of the UI and the logs
        .config("spark.sql.redaction.options.regex", "(?i)url|jaas|password|secret|keystore\\.key|token")
    )
    if local:
        builder = builder.config("spark.driver.host", settings.ui_host).config("spark.driver.bindAddress",
                                                                              settings.ui_host)
    if kafka:
        jars = kafka_jars(settings)
        if jars:
            builder = builder.config("spark.jars", ",".join(jars))
    return builder.getOrCreate()
