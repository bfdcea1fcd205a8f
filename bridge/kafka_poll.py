"""Low-latency batch consumption.

librdkafka's `consume(n, timeout)` blocks until it has `n` records *or* the timeout ran out, so a reader that
asks for a batch at low traffic waits the whole timeout for every record (measured: end-to-end latencies in
steps of the timeout). `consume_available` returns as soon as one record is there, plus whatever else is
already queued locally, so batches still form under load.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def consume_available(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to `max_messages` records: those already fetched, else wait at most `timeout_s` for the first one."""
    msgs = consumer.consume(max_messages, 0)
    if msgs:
        return msgs
    msgs = consumer.consume(1, timeout_s)
    if msgs and max_messages > 1:
        msgs.extend(consumer.consume(max_messages - 1, 0))
    return msgs
