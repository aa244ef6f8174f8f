"""The ``ahead`` judgement against a real server: the stream's last-generated-id is read again
after the groups (streamcore.groups.settled_last_generated), so an entry appended and delivered
between XINFO STREAM and XINFO GROUPS never makes a healthy group look ahead, also on a stream
whose IDs are past the clock (a breaker saw 11 of such reads under traffic before)."""

from __future__ import annotations

import time

import pytest
from redis.exceptions import ResponseError

from streamcore.groups import is_ahead, settled_last_generated


async def test_a_stale_last_generated_id_is_read_again_before_a_group_is_called_ahead(r, raw, names):
    future_ms = int(time.time() * 1000) + 60_000  # an explicit ID a minute past the clock
    await r.xadd(names.stream, {"data": "{}"}, id=f"{future_ms}-1")
    await r.xgroup_create(names.stream, names.group, "0")
    stale = (await r.xinfo_stream(names.stream))["last-generated-id"]
    # Between the two reads: one more entry appended (XADD * takes past the future ID) and delivered.
    await r.xadd(names.stream, {"data": "{}"})
    await r.xreadgroup(names.group, "c1", {names.stream: ">"}, count=10)
    (group,) = await r.xinfo_groups(names.stream)
    delivered = group["last-delivered-id"]
    assert delivered == f"{future_ms}-2" and is_ahead(delivered, stale), "the race this guards against"
    for client in (r, raw):  # str and bytes replies
        fresh = await settled_last_generated(client, names.stream, stale, [delivered])
        assert fresh == f"{future_ms}-2"
        assert not is_ahead(delivered, fresh)


async def test_a_group_really_ahead_stays_ahead_and_nothing_is_read_when_none_looks_ahead(r, names):
    await r.xadd(names.stream, {"data": "{}"})
    await r.xgroup_create(names.stream, names.group, "$")
    last = (await r.xinfo_stream(names.stream))["last-generated-id"]
    largest = "18446744073709551615-18446744073709551615"
    assert await settled_last_generated(r, names.stream, last, [largest]) == last
    assert is_ahead(largest, last)
    # No group looks ahead: the given ID comes back without a read (XINFO STREAM on a string key
    # fails with WRONGTYPE, so a read would show).
    not_a_stream = names.stream + ":string"
    await r.set(not_a_stream, "x")
    assert await settled_last_generated(r, not_a_stream, last, [last, None]) == last
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await settled_last_generated(r, not_a_stream, last, [largest])
    # A stream deleted meanwhile: the given ID, not an error.
    assert await settled_last_generated(r, names.stream + ":gone", last, [largest]) == last
