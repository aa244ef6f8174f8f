"""Partition keys and routing (STREAM_PARTITIONS, REDIS_CLUSTER): hash tags in distinct slot
ranges, the crc32 routing rule, unchanged names with one partition, and the settings' exit 2 lines."""

from __future__ import annotations

import zlib

import pytest
from redis.crc import key_slot

from consumer.settings import ConsumerSettings
from streamcore.keys import Keys, partition_keys, partition_of, partition_tag, slot_range
from streamcore.settings import settings_from_command_line


def test_one_partition_without_cluster_keeps_todays_names():
    (keys,) = partition_keys("orders", "order-processors", "orders:dlq", 1)
    assert keys == Keys(stream="orders", group="order-processors", dlq="orders:dlq")
    assert (keys.idempotency("k"), keys.order_index("7"), keys.trim_floor, keys.heartbeat("pod")) == (
        "orders:idem:" + __import__("hashlib").sha256(b"k").hexdigest(), "orders:order:7", "orders:trim-floor",
        "orders:hb:order-processors:pod")
    assert ConsumerSettings(stream_name="orders").keys == keys


def test_every_tag_lands_in_its_own_slot_range_for_1_to_256_partitions():
    for n in range(1, 257):
        ranges = []
        for i in range(n):
            first, last = slot_range(i, n)
            slot = key_slot(("{" + partition_tag(i, n) + "}").encode())
            assert first <= slot <= last, (i, n, slot)
            ranges.append((first, last))
        assert ranges[0][0] == 0 and ranges[-1][1] == 16383
        assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))


def test_every_key_of_a_partition_shares_one_slot():
    parts = partition_keys("orders", "g", "orders:dlq", 6)
    assert [k.partition for k in parts] == list(range(6)) and {k.partitions for k in parts} == {6}
    assert parts[0].stream == "orders:{" + partition_tag(0, 6) + "}"
    assert parts[0].dlq == "orders:dlq:{" + partition_tag(0, 6) + "}"
    for k in parts:
        names = [k.stream, k.dlq, k.idempotency("abc"), k.order_index("o-1"), k.processed("o-1"), k.dlq_index("o-1"),
                 k.trim_floor, k.lost_counter, k.lost_reported, k.heartbeat("pod-{x}")]
        assert len({key_slot(name.encode()) for name in names}) == 1, names
    assert len({key_slot(k.stream.encode()) for k in parts}) == 6


def test_cluster_mode_tags_even_one_partition():
    (keys,) = partition_keys("orders", "g", "orders:dlq", 1, cluster=True)
    assert keys.stream == "orders:{p0.1}" and key_slot(keys.stream.encode()) == key_slot(keys.dlq.encode())


def test_routing_is_crc32_of_the_order_id_modulo_n():
    assert partition_of("1001", 1) == 0
    assert [partition_of(str(i), 6) for i in range(5)] == [zlib.crc32(str(i).encode()) % 6 for i in range(5)]
    assert partition_of("A-7", 256) == zlib.crc32(b"A-7") % 256
    spread = {partition_of(str(i), 6) for i in range(100)}
    assert spread == set(range(6))


def test_braces_are_refused_with_partitions():
    with pytest.raises(ValueError, match="brace"):
        partition_keys("or{ders}", "g", "d", 2)
    assert partition_keys("or{ders}", "g", "d", 1)[0].stream == "or{ders}"  # today's behaviour


@pytest.mark.parametrize(("env", "line"), [
    ({"STREAM_PARTITIONS": "0"},
     "python -m consumer: invalid setting STREAM_PARTITIONS='0': should be greater than or equal to 1"),
    ({"STREAM_PARTITIONS": "257"},
     "python -m consumer: invalid setting STREAM_PARTITIONS='257': should be less than or equal to 256"),
    ({"STREAM_PARTITIONS": "4", "STREAM_NAME": "a{b}"},
     "python -m consumer: invalid settings: STREAM_NAME='a{b}' must not hold '{' or '}' with STREAM_PARTITIONS > 1 "
     "or REDIS_CLUSTER=true (partition keys carry their own hash tag)"),
    ({"REDIS_CLUSTER": "true", "DLQ_STREAM": "x}"},
     "python -m consumer: invalid settings: DLQ_STREAM='x}' must not hold '{' or '}' with STREAM_PARTITIONS > 1 "
     "or REDIS_CLUSTER=true (partition keys carry their own hash tag)"),
])
def test_bad_partition_settings_exit_2_with_one_line(monkeypatch, capsys, env, line):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        settings_from_command_line(ConsumerSettings, prog="python -m consumer", description="", argv=[])
    assert exited.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_defaults_are_one_partition_and_no_cluster():
    s = ConsumerSettings()
    assert (s.stream_partitions, s.redis_cluster, len(s.partitions)) == (1, False, 1)
