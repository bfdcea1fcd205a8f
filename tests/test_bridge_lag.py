"""Consumer lag on the real broker (bridge/lag.py): what a paused bridge reports, and the probe's offsets.

The lag is what an operator (and an autoscaler reading the bridge's metrics) sees when the endpoint is down and
the bridge stops consuming, so it must keep moving with the broker's end offsets, not with what the paused
consumer last fetched.
"""

from __future__ import annotations

import httpx
from confluent_kafka import Consumer, TopicPartition

from bridge.lag import LagProbe
from tests.kafka_support import (
    BridgeProcess,
    Topics,
    free_port,
    kafka,  # noqa: F401  (fixture)
    produce_to,
    topics,  # noqa: F401  (fixture)
    wait_for,
)


def test_a_bridge_whose_endpoint_is_down_reports_the_whole_backlog_as_lag(kafka: str, topics: Topics) -> None:  # noqa: F811
    """Nothing answers at INFERENCE_URL: the bridge pauses, and its lag must count every record produced
    (never-committed group: measured from the earliest offset), also records produced while it is paused."""
    bridge = BridgeProcess(topics, kafka, f"http://127.0.0.1:{free_port()}", BRIDGE_LAG_INTERVAL_S="0.5").start(
        wait_ready=False)
    try:
        bridge.wait_ready(60, path="/livez")  # never ready: no endpoint
        produce_to(kafka, topics.input, [(f"a{i}".encode(), b"not read", [], i % 3) for i in range(30)])
        wait_for(lambda: bridge.metric("bridge_consumer_lag", topic=topics.input) == 30, 60, "lag 30",
                 interval=0.5)
        produce_to(kafka, topics.input, [(f"b{i}".encode(), b"not read", [], 5) for i in range(12)])
        wait_for(lambda: bridge.metric("bridge_consumer_lag", topic=topics.input) == 42, 60, "lag 42",
                 interval=0.5)
        assert bridge.metric("bridge_consumer_lag", topic=topics.input, partition="5") == 12
    finally:
        bridge.stop_quietly()


def test_the_probe_reads_end_offsets_and_the_groups_commits(kafka: str, topics: Topics) -> None:  # noqa: F811
    produce_to(kafka, topics.input, [(None, b"x", [], 0)] * 7 + [(None, b"y", [], 1)] * 4)
    committer = Consumer({"bootstrap.servers": kafka, "group.id": topics.group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topics.input, 0, 5)], asynchronous=False)
    committer.close()
    probe = LagProbe({"bootstrap.servers": kafka}, topics.group)
    try:
        tps = [(topics.input, 0), (topics.input, 1), (topics.input, 2)]
        assert probe.reachable(topics.input)
        assert probe.end_offsets(tps) == {tps[0]: 7, tps[1]: 4, tps[2]: 0}
        # partition 0 committed at 5; 1 and 2 never: where a new consumer would start (earliest)
        assert probe.committed(tps) == {tps[0]: 5, tps[1]: 0, tps[2]: 0}
        ok, high, committed, member = probe.measure(topics.input, tps, tps[:1], "no-such-member")
        assert ok and high[tps[0]] == 7 and committed == {tps[0]: 5} and member is False
    finally:
        probe.close()


def test_the_probe_reports_an_unreachable_cluster() -> None:
    topic = "image_data"
    probe = LagProbe({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, "g", timeout_s=1.0)
    try:
        assert probe.measure(topic, [(topic, 0)], [], "m") == (False, {}, {}, None)
        assert probe.is_member("m") is None  # no answer: nothing learnt
    finally:
        probe.close()


def test_the_probe_knows_whether_the_broker_lists_a_consumer_in_its_group(kafka: str, topics: Topics) -> None:  # noqa: F811
    """The bridge's liveness asks the broker, not the consumer: a member while it polls, not after it left."""
    consumer = Consumer({"bootstrap.servers": kafka, "group.id": topics.group, "enable.auto.commit": False})
    probe = LagProbe({"bootstrap.servers": kafka}, topics.group)
    try:
        assert probe.is_member(consumer.memberid()) is False  # not joined yet
        consumer.subscribe([topics.input])
        wait_for(lambda: consumer.poll(0.2) is None and bool(consumer.assignment()), 60, "assignment")
        member_id = consumer.memberid()
        assert probe.is_member(member_id) is True
        assert probe.is_member("someone-else") is False
        consumer.close()
        wait_for(lambda: probe.is_member(member_id) is False, 30, "left the group")
    finally:
        probe.close()


def test_a_running_bridge_is_in_its_group_and_says_so(kafka: str, topics: Topics, serving: str) -> None:  # noqa: F811
    bridge = BridgeProcess(topics, kafka, serving, BRIDGE_LAG_INTERVAL_S="0.5").start()
    try:
        wait_for(lambda: httpx.get(f"{bridge.url}/readyz", timeout=5).json()["in_group"] is True, 60, "in_group",
                 interval=0.5)
        assert httpx.get(f"{bridge.url}/livez", timeout=5).status_code == 200
    finally:
        bridge.stop_quietly()
