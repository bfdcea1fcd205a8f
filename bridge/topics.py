"""Create the bridge's topics idempotently (used by scripts/kafka.sh and the tests).

`python -m bridge.topics [--wait S] ensure [--partitions N] [NAME...]`: waits for the broker, then creates
the input (several partitions so several bridge replicas share the load), output, review (unless
KAFKA_REVIEW_TOPIC is empty) and DLQ topics with `max.message.bytes` = KAFKA_MAX_MESSAGE_BYTES, and the DLQ
with KAFKA_DLQ_MAX_MESSAGE_BYTES (default: 64 KiB more, so a full dead-letter copy of any input record fits);
existing topics are left as they are.
"""

from __future__ import annotations

import argparse
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from bridge.config import Config

INPUT_PARTITIONS = 6


def wait_for_broker(admin: AdminClient, timeout_s: float) -> None:
    """Block until the broker answers a metadata request (it listens before it is ready)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=5)
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"Kafka not ready after {timeout_s:.0f}s: {exc}") from None
            time.sleep(0.5)


def ensure_topics(admin: AdminClient, topics: dict[str, int], max_message_bytes: int,
                  limits: dict[str, int] | None = None) -> list[str]:
    """Create the missing topics in `topics` (name -> partitions); return the names created.

    Every topic gets `max_message_bytes` unless `limits` names its own (the DLQ: see config.dlq_limit)."""
    existing = set(admin.list_topics(timeout=10).topics)
    limits = limits or {}
    wanted = [
        NewTopic(name, num_partitions=parts, replication_factor=1,
                 config={"max.message.bytes": str(limits.get(name, max_message_bytes))})
        for name, parts in topics.items() if name not in existing
    ]
    created = []
    for name, fut in (admin.create_topics(wanted, operation_timeout=30) if wanted else {}).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                raise
    return created


def default_topics(cfg: Config, partitions: int = INPUT_PARTITIONS) -> dict[str, int]:
    """name -> partitions of every topic the bridge reads or writes; the review topic is keyed and sized like
    the output topic (it carries copies of its records)."""
    review = {cfg.review_topic: partitions} if cfg.review_topic else {}
    return {cfg.input_topic: partitions, cfg.output_topic: partitions, **review, cfg.dlq_topic: 1}


def main(argv: list[str] | None = None) -> None:
    cfg = Config.from_env()
    ap = argparse.ArgumentParser(prog="python -m bridge.topics", description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=cfg.bootstrap_servers)
    ap.add_argument("--wait", type=float, default=60, help="seconds to wait for the broker")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ens = sub.add_parser("ensure", help="create missing topics")
    ens.add_argument("--partitions", type=int, default=INPUT_PARTITIONS, help="partitions of the input topic")
    ens.add_argument("names", nargs="*", help="extra topic names (same partitions as the input topic)")
    sub.add_parser("list", help="list topics and partition counts")
    args = ap.parse_args(argv)
    admin = AdminClient({**cfg.client_settings(), "bootstrap.servers": args.bootstrap})
    wait_for_broker(admin, args.wait)
    if args.cmd == "ensure":
        topics = default_topics(cfg, args.partitions) | {n: args.partitions for n in args.names}
        created = ensure_topics(admin, topics, cfg.max_message_bytes, {cfg.dlq_topic: cfg.dlq_max_message_bytes})
        print(f"topics: {', '.join(f'{n}({p})' for n, p in topics.items())}; created: {', '.join(created) or 'none'}")
    else:
        for name, meta in sorted(admin.list_topics(timeout=10).topics.items()):
            if not name.startswith("__"):
                print(f"{name}\t{len(meta.partitions)}")


if __name__ == "__main__":
    main()
