"""Consumer lag and broker reachability, measured on a Kafka client and a thread of their own.

The group consumer is the wrong client for this: librdkafka sends its ListOffsets requests over the broker
connection that carries the consumer's fetch long-poll, so each watermark query waited out `fetch.wait.max.ms`
(500 ms per partition, measured: 3 s for six partitions), and the consumer thread it ran on accepted no records
meanwhile (a reference burst ran at ~95 instead of ~150 img/s). An admin client asks for every partition's end
offset in one request, on its own connection, while the consumer keeps consuming.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

TP = tuple[str, int]


class LagProbe:
    """End offsets of the assigned partitions, and the group's committed offsets where the bridge has no
    position of its own yet; every call blocks, so run them on `pool` (one thread, never the consumer's)."""

    def __init__(self, settings: dict[str, Any], group_id: str, timeout_s: float = 5.0) -> None:
        self.admin = AdminClient(settings)
        self.group_id = group_id
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lag")

    def reachable(self, topic: str) -> bool:
        """Whether the cluster answers a metadata request for `topic` in time."""
        try:
            self.admin.list_topics(topic, timeout=self.timeout_s)
            return True
        except KafkaException:
            return False

    def end_offsets(self, tps: list[TP], spec: OffsetSpec | None = None) -> dict[TP, int]:
        """High watermark (or `spec`'s offset) per partition; partitions whose answer failed are left out."""
        if not tps:
            return {}
        spec = spec or OffsetSpec.latest()
        futures = self.admin.list_offsets({TopicPartition(t, p): spec for t, p in tps},
                                          request_timeout=self.timeout_s)
        out = {}
        for tp, fut in futures.items():
            try:
                out[(tp.topic, tp.partition)] = fut.result().offset
            except KafkaException:
                continue
        return out

    def committed(self, tps: list[TP]) -> dict[TP, int]:
        """The group's committed offset per partition, or the partition's earliest offset where it has none
        (`auto.offset.reset=earliest`: where a new consumer would start)."""
        if not tps:
            return {}
        request = [ConsumerGroupTopicPartitions(self.group_id, [TopicPartition(t, p) for t, p in tps])]
        try:
            answer = self.admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)
            parts = next(iter(answer.values())).result().topic_partitions
        except KafkaException:
            return {}
        found = {(tp.topic, tp.partition): tp.offset for tp in parts if tp.error is None}
        never = [tp for tp, offset in found.items() if offset < 0]
        return found | self.end_offsets(never, OffsetSpec.earliest())

    def is_member(self, member_id: str | None) -> bool | None:
        """Whether the broker counts `member_id` (the consumer's own `memberid()`) in the group; None when the
        broker does not answer. The consumer's own view can be wrong: after a broker restart one stayed out of its
        group for minutes (the group EMPTY) while its poll loop turned and librdkafka reported nothing."""
        try:
            group = self.admin.describe_consumer_groups([self.group_id], request_timeout=self.timeout_s)
            members = next(iter(group.values())).result().members
        except KafkaException:
            return None
        return bool(member_id) and any(m.member_id == member_id for m in members)

    def measure(self, topic: str, assigned: list[TP], unknown: list[TP],
                member_id: str | None = None) -> tuple[bool, dict[TP, int], dict[TP, int], bool | None]:
        """(reachable, end offsets of `assigned`, committed offsets of `unknown`, whether `member_id` is in the
        group): one admin round trip each."""
        if not self.reachable(topic):
            return False, {}, {}, None
        return True, self.end_offsets(assigned), self.committed(unknown), self.is_member(member_id)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
