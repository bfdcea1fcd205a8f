"""`python -m bridge.consume`: print predictions (and DLQ records) as they arrive, as a live table.

Reads `image_predictions` and `image_data.dlq` from their current end (or `--from-beginning`) by direct
partition assignment, so it commits nothing and never competes with the bridge's consumer group.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bridge.config import Config
from bridge.kafka_poll import consume_available


@dataclass
class Row:
    id: str
    dlq: bool
    model: str = ""
    label: str = ""
    score: float | None = None
    threshold: float | None = None
    inference_ms: float | None = None
    end_to_end_ms: float | None = None
    reason: str = ""
    error: str = ""
    decision: str = ""


def open_consumer(cfg: Config, topics: list[str], from_beginning: bool) -> Consumer:
    """A group-less reader assigned to every partition of `topics` at their end (or beginning)."""
    consumer = Consumer({**cfg.consumer_settings(), "group.id": "bridge-consume-cli", "enable.auto.commit": False})
    meta = consumer.list_topics(timeout=10)
    parts = []
    for topic in topics:
        if topic not in meta.topics:
            raise SystemExit(f"topic {topic} does not exist (make kafka-up creates it)")
        for p in meta.topics[topic].partitions:
            if from_beginning:
                parts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
            else:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                parts.append(TopicPartition(topic, p, high))
    consumer.assign(parts)
    return consumer


def rows(consumer: Consumer, dlq_topic: str, timeout_s: float | None = None,
         wait_s: float = 0.5) -> Iterator[Row | None]:
    """Rows as records arrive; None every idle poll so callers can refresh or stop.

    `wait_s` is how long one poll may block in librdkafka; a gevent caller (Locust) passes 0 and sleeps
    cooperatively on None, because a blocking C call would freeze every greenlet of its process.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is None or time.monotonic() < deadline:
        msgs = consume_available(consumer, 100, wait_s)
        if not msgs:
            yield None
        for msg in msgs:
            if msg.error():
                continue
            key = (msg.key() or b"").decode("utf-8", "replace")
            if msg.topic() == dlq_topic:
                h = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
                yield Row(key, True, h.get("model", ""), reason=h.get("error_class", ""), error=h.get("error", ""))
                continue
            try:
                v = json.loads(msg.value())
            except (TypeError, ValueError):
                continue
            yield Row(v.get("id", key), False, v.get("model", ""), v.get("label", ""), v.get("harmful_score"),
                      v.get("threshold"), v.get("inference_ms"), v.get("end_to_end_ms"),
                      decision=v.get("decision", ""))


ID_WIDTH = 20  # with the other columns the table fits an 80-column terminal


def short_id(row: Row, prefix: str = "", width: int = ID_WIDTH) -> str:
    """The id without the run's common prefix (and the demo's `<model>/` part, which the model column shows);
    a long one keeps its distinctive tail ("…long_name.png")."""
    text = row.id.removeprefix(prefix).removeprefix(f"{row.model}/") if prefix else row.id
    return text if len(text) <= width else "…" + text[-(width - 1):]


def table(seen: list[Row], title: str, limit: int = 30, prefix: str = "") -> Table:
    t = Table(title=title, expand=False)
    t.add_column("id", no_wrap=True)
    t.add_column("model", no_wrap=True)
    t.add_column("label", no_wrap=True)
    for col in ("score/thr", "infer", "e2e ms"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in seen[-limit:]:
        if r.dlq:
            t.add_row(short_id(r, prefix), r.model, f"[red]DLQ: {r.reason}[/red]", "", "",
                      f"[red]{r.error[:20]}[/red]")
        else:
            # a benign label in the review band is shown as what happens to it: human review
            label, style = ("review", "bold yellow") if r.decision == "review" else (
                r.label, "bold red" if r.label == "harmful" else "green")
            t.add_row(short_id(r, prefix), r.model, f"[{style}]{label}[/{style}]",
                      f"{r.score:.3f}/{r.threshold:.2f}", f"{r.inference_ms:.0f}", f"{r.end_to_end_ms:.0f}")
    return t


def summary(seen: list[Row]) -> str:
    preds = [r for r in seen if not r.dlq]
    e2e = [r.end_to_end_ms for r in preds if r.end_to_end_ms is not None]
    text = f"{len(preds)} predictions, {len(seen) - len(preds)} dead-lettered"
    if e2e:
        text += f"; end-to-end latency median {statistics.median(e2e):.0f} ms, max {max(e2e):.0f} ms"
    return text


def follow(consumer: Consumer, cfg: Config, expect: set[str] | None, timeout_s: float | None,
           console: Console, prefix: str = "") -> list[Row]:
    """Live table until every expected id was seen (or timeout / Ctrl-C); returns the rows."""
    seen: list[Row] = []
    ids: set[str] = set()
    title = f"{cfg.output_topic} + {cfg.dlq_topic} @ {cfg.bootstrap_servers}"
    if prefix:
        title += f"\nids {prefix}…"
    with Live(table(seen, title, prefix=prefix), console=console, refresh_per_second=4) as live:
        try:
            for row in rows(consumer, cfg.dlq_topic, timeout_s):
                if row is not None:
                    seen.append(row)
                    ids.add(row.id)
                    live.update(table(seen, title, prefix=prefix))
                if expect is not None and expect <= ids:
                    break
        except KeyboardInterrupt:
            pass
    return seen


def follow_then_summarise(consumer: Consumer, cfg: Config, ids: set[str] | None, timeout: float | None,
                          console: Console, prefix: str = "") -> list[Row]:
    """Live table until `ids` are all seen (or the timeout / Ctrl-C), then close and print the summary."""
    try:
        seen = follow(consumer, cfg, ids, timeout, console, prefix)
    finally:
        consumer.close()
    console.print()
    console.print(summary(seen))
    return seen


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env()
    ap = argparse.ArgumentParser(prog="python -m bridge.consume", description=__doc__.splitlines()[0])
    ap.add_argument("--from-beginning", action="store_true")
    ap.add_argument("--timeout", type=float, help="stop after this many seconds")
    args = ap.parse_args(argv)
    consumer = open_consumer(cfg, [cfg.output_topic, cfg.dlq_topic], args.from_beginning)
    follow_then_summarise(consumer, cfg, None, args.timeout, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
