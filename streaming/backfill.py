"""Batch backfill: score every image under a folder tree (any path Spark can read) into Parquet, with Spark.

    python -m streaming.backfill --out OUT [--images DIR] [--model mobilenet_v2] [--jsonl] [--split test]

Spark's `binaryFile` source lists and reads the files; each partition is scored in the executors by the model
archive's own graph, decoding and thresholds (`streaming.inprocess.score_images`, the code the servers run);
OUT/predictions gets one row per file: the prediction fields of the Kafka records (label, harmful_score,
threshold, decision, review_threshold, categories, model, model_version) plus path, size, modification time and
sha256, or error_reason/error for a file the handler refuses. Re-running skips every file whose (path, sha256) is
already in OUT, so an interrupted or grown backfill only scores what is new or changed. `--split` reads a labelled
data set (manifest.csv or class folders, as `make evaluate`), scores only that split and reports its accuracy with
the same metrics as `make evaluate`.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from demo.samples import skimage_photos
from handlers.envelopes import Prediction
from handlers.errors import ModerationError
from handlers.fetch import FetchSettings
from streaming.config import StreamingSettings

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

IMAGE_GLOB = "*.{jpg,jpeg,png,gif,bmp,webp,tif,tiff,JPG,JPEG,PNG,GIF,BMP,WEBP,TIF,TIFF}"
SCORED_SCHEMA = ("path string, size long, mtime_ms long, sha256 string, etag string, label string, "
                 "harmful_score double, threshold double, decision string, review_threshold double, "
                 "categories map<string,double>, model string, model_version string, error_reason string, error string")
_SCORERS: dict[tuple[str, str], Any] = {}


def scored_arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ms", pa.int64()), ("sha256", pa.string()),
                      ("etag", pa.string()), ("label", pa.string()), ("harmful_score", pa.float64()),
                      ("threshold", pa.float64()),
                      ("decision", pa.string()), ("review_threshold", pa.float64()),
                      ("categories", pa.map_(pa.string(), pa.float64())), ("model", pa.string()),
                      ("model_version", pa.string()), ("error_reason", pa.string()), ("error", pa.string())])


def _scored(row: dict[str, Any], result: Prediction | ModerationError, model: str) -> dict[str, Any]:
    if isinstance(result, Prediction):
        cats = list((result.categories or {}).items()) or None
        return {**row, "label": result.label, "harmful_score": result.harmful_score, "threshold": result.threshold,
                "decision": result.decision, "review_threshold": result.review_threshold, "categories": cats,
                "model": result.model, "model_version": str(result.model_version)}
    return {**row, "model": model, "error_reason": result.reason, "error": result.message}


def _scorer(model_store: str, model: str) -> Any:
    from streaming.inprocess import InProcessClassifier

    if (model_store, model) not in _SCORERS:  # one per Python worker (Spark reuses them)
        _SCORERS[(model_store, model)] = InProcessClassifier(model_store).scorer(model)
    return _SCORERS[(model_store, model)]


def score_partition(model_store: str, model: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function of files: rows of (path, size, mtime_ms, sha256, content) -> scored rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        from streaming.inprocess import score_images

        scorer, schema = _scorer(model_store, model), scored_arrow_schema()
        for batch in batches:
            rows = batch.to_pylist()
            results = score_images(scorer, [r.pop("content") for r in rows])
            yield pa.RecordBatch.from_pylist([_scored(r, x, model) for r, x in zip(rows, results, strict=True)],
                                             schema=schema)

    return run


def score_objects(model_store: str, model: str, fetch: FetchSettings,
                  ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function of an object-store prefix: rows of (path, size, mtime_ms, etag) -> scored rows.
    Each executor fetches its objects with the shared fetcher (allow-list, byte cap, the AWS credential chain);
    an object that cannot be fetched gets the fetcher's reason, like a file the decoder refuses."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import asyncio
        import hashlib

        import pyarrow as pa

        from handlers.fetch import Fetcher, FetchError
        from streaming.inprocess import score_images

        scorer, schema = _scorer(model_store, model), scored_arrow_schema()
        fetcher = Fetcher(fetch)

        async def get(path: str) -> bytes | FetchError:
            try:
                return (await fetcher.fetch(path)).data
            except FetchError as exc:
                return exc

        async def get_all(paths: list[str]) -> list[bytes | FetchError]:  # gathered on this loop (FETCH_CONCURRENCY)
            return await asyncio.gather(*(get(p) for p in paths))

        loop = asyncio.new_event_loop()
        try:
            for batch in batches:
                rows = batch.to_pylist()
                got = loop.run_until_complete(get_all([r["path"] for r in rows]))
                images = [g for g in got if isinstance(g, bytes)]
                results = iter(score_images(scorer, images))
                out = []
                for row, data in zip(rows, got, strict=True):
                    if isinstance(data, FetchError):
                        out.append({**row, "model": model, "error_reason": data.reason, "error": data.message})
                        continue
                    out.append(_scored({**row, "sha256": hashlib.sha256(data).hexdigest()}, next(results), model))
                yield pa.RecordBatch.from_pylist(out, schema=schema)
        finally:
            loop.run_until_complete(fetcher.close())
            loop.close()

    return run


def object_listing(prefix: str, fetch: FetchSettings) -> list[dict[str, Any]]:
    """(path, size, mtime_ms, etag) of every object under `s3://bucket/prefix`, listed in the driver."""
    from handlers.fetch import s3_client

    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    pages = s3_client(fetch).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
    return [{"path": f"s3://{bucket}/{o['Key']}", "size": int(o["Size"]),
             "mtime_ms": int(o["LastModified"].timestamp() * 1000), "etag": o.get("ETag")}
            for page in pages for o in page.get("Contents", ()) if not o["Key"].endswith("/")]


def files(spark: SparkSession, images: list[str], glob: str) -> DataFrame:
    from pyspark.sql import functions as F

    reader = spark.read.format("binaryFile").option("pathGlobFilter", glob)
    if len(images) == 1:
        reader = reader.option("recursiveFileLookup", "true")
    return reader.load(images).select(
        "path", F.col("length").alias("size"), F.unix_millis("modificationTime").alias("mtime_ms"),
        F.sha2("content", 256).alias("sha256"), F.lit(None).cast("string").alias("etag"), "content")


def backfill(spark: SparkSession, images: list[str], out: Path, model: str, model_store: str, glob: str = IMAGE_GLOB,
             jsonl: bool = False, fetch: FetchSettings | None = None) -> dict[str, Any]:
    """Score what OUT does not have yet; returns the run's summary. `images`: files and folders, or one
    `s3://bucket/prefix` (read with the fetcher's settings `fetch`, default FETCH_* from the environment)."""
    from pyspark.sql import functions as F

    target = out / "predictions"
    run_id = uuid.uuid4().hex[:12]
    done = None
    if (target / "_SUCCESS").exists() or any(target.glob("*.parquet")):
        done = spark.read.parquet(str(target))
    if images[0].startswith("s3://"):  # an object-store prefix: the ETag says "same content" before any fetch
        listing = object_listing(images[0], fetch or FetchSettings.from_env())
        objects = spark.createDataFrame(listing, "path string, size long, mtime_ms long, etag string")
        if done is not None:
            objects = objects.join(done.select("path", "etag").distinct(), ["path", "etag"], "left_anti")
        parts = max(1, min(spark.sparkContext.defaultParallelism * 4, len(listing) // 16))
        scored = objects.repartition(parts).mapInArrow(
            score_objects(model_store, model, fetch or FetchSettings.from_env()), SCORED_SCHEMA)
        total = len(listing)
    else:
        todo = files(spark, images, glob)
        if done is not None:
            todo = todo.join(done.select("path", "sha256").distinct(), ["path", "sha256"], "left_anti")
        scored = todo.mapInArrow(score_partition(model_store, model), SCORED_SCHEMA)
        total = -1
    scored = (scored
              .withColumn("modification_time", F.timestamp_millis("mtime_ms")).drop("mtime_ms")
              .withColumn("run_id", F.lit(run_id)).withColumn("scored_at", F.current_timestamp()))
    t0 = time.perf_counter()
    scored.write.mode("append").parquet(str(target))
    seconds = time.perf_counter() - t0
    this_run = spark.read.parquet(str(target)).where(F.col("run_id") == run_id).cache()
    if jsonl:
        this_run.write.mode("append").json(str(out / "predictions_jsonl"))
    n = this_run.count()
    if total < 0:
        total = files(spark, images, glob).select("path").count()
    summary = {
        "run_id": run_id, "files": total, "scored": n, "skipped": total - n, "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 2) if n and seconds > 0 else 0.0,
        "labels": {r["label"]: r["count"] for r in this_run.where("label IS NOT NULL").groupBy("label").count()
                   .collect()},
        "decisions": {r["decision"]: r["count"] for r in this_run.where("decision IS NOT NULL").groupBy("decision")
                      .count().collect()},
        "errors": {r["error_reason"]: r["count"] for r in this_run.where("error_reason IS NOT NULL")
                   .groupBy("error_reason").count().collect()},
    }
    this_run.unpersist()
    return summary


def accuracy(spark: SparkSession, out: Path, labels: dict[str, int]) -> dict[str, Any]:
    """`make evaluate`'s metrics (training.evaluation.compute_metrics) over every scored file of `labels`
    (path -> 1 harmful / 0 benign), at the served threshold; unreadable files are skipped, as evaluate does."""
    from training.evaluation import compute_metrics

    rows = (spark.read.parquet(str(out / "predictions")).where("label IS NOT NULL").orderBy("scored_at")
            .select("path", "harmful_score", "threshold").collect())
    latest = {_local(r["path"]): r for r in rows}  # in scoring order: a re-scored file's newest row wins
    kept = [p for p in labels if p in latest]
    threshold = float(latest[kept[0]]["threshold"]) if kept else 0.5
    metrics = compute_metrics([labels[p] for p in kept], [latest[p]["harmful_score"] for p in kept], threshold)
    return {**metrics, "images": len(kept), "missing": len(labels) - len(kept)}


def _local(path: str) -> str:
    return path.removeprefix("file:")


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"backfill {summary['run_id']}", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("files matched", str(summary["files"]))
    table.add_row("already scored (skipped)", str(summary["skipped"]))
    table.add_row("scored now", str(summary["scored"]))
    for name in ("labels", "decisions", "errors"):
        for key, count in sorted(summary[name].items()):
            table.add_row(f"{name[:-1]} {key}", str(count))
    table.add_row("throughput", f"{summary['images_per_s']} images/s ({summary['seconds']} s)")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streaming.backfill", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", help="folder tree (or any path Spark reads: hdfs://, ...) of images, or an object "
                                    "store prefix s3://bucket/prefix (FETCH_* settings); default: the sample photos")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: OUT/predictions (Parquet), OUT/predictions_jsonl")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--jsonl", action="store_true", help="also write this run's rows as JSON lines")
    p.add_argument("--glob", default=IMAGE_GLOB, help="file name pattern (Hadoop glob; '*' for every file)")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="IMAGES is a labelled data set: score only this split and report its accuracy")
    args = p.parse_args(argv)
    from bridge import logs
    from streaming.session import session

    settings = StreamingSettings.from_env()
    logs.setup("WARNING")
    console = Console(stderr=True)
    images = [args.images] if args.images else [str(f) for f in skimage_photos()]
    labels: dict[str, int] = {}
    if args.split:
        if not args.images:
            p.error("--split needs --images: a labelled data set")
        from training.data import load_dataset

        samples = [s for s in load_dataset(args.images) if s.split == args.split]
        if not samples:
            p.error(f"no {args.split} images in {args.images}")
        labels = {str(Path(s.path).resolve()): int(s.label) for s in samples}
        images = sorted(labels)
    t0 = time.perf_counter()
    spark = session(settings, "image-moderation-backfill", kafka=False, console_progress=True)
    console.print(f"backfill: Spark {spark.version} ready ({time.perf_counter() - t0:.0f} s), "
                  f"UI {spark.sparkContext.uiWebUrl}")
    try:
        summary = backfill(spark, images, args.out, args.model, settings.model_store, args.glob, args.jsonl,
                           settings.bridge.fetch)
        print_summary(summary, console)
        if labels:
            m = accuracy(spark, args.out, labels)
            console.print(f"{args.split} split: {m['images']} images, accuracy {m['accuracy']:.4f}, precision "
                          f"{m['precision']:.4f}, recall {m['recall']:.4f}, ROC-AUC {m['roc_auc']:.4f} at threshold "
                          f"{m['threshold']:.6f}")
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
