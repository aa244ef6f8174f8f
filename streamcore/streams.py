"""Stream operations every component shares: group creation, appending orders, dead-lettering.

The multi-key steps run as Lua scripts, so each is atomic on the server:

* :func:`append_order` — idempotency check, ``XADD`` (trimming only below the safe floor),
  orderId index, idempotency record;
* :func:`dead_letter` — ownership check, ``XADD`` to the dead-letter stream and ``XACK`` of the
  original in one step, so an order is never both pending and dead-lettered, nor neither.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamcore.keys import Keys

logger = logging.getLogger(__name__)

#: Default lifetime of the orderId → entry ID index, seconds (7 days, as the processed markers).
ORDER_INDEX_TTL_S = 7 * 86400


def is_nogroup(exc: BaseException) -> bool:
    """True for the ``NOGROUP`` error (stream or group missing: flushed, evicted, deleted)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


def is_busygroup(exc: BaseException) -> bool:
    """True for ``BUSYGROUP`` (the group already exists: fine when creating it)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("BUSYGROUP")


def is_no_such_key(exc: BaseException) -> bool:
    """True for the error XINFO gives on a missing stream (``ERR no such key``)."""
    return isinstance(exc, ResponseError) and "no such key" in str(exc).lower()


async def stream_state(r: aioredis.Redis, keys: Keys) -> tuple[dict, list[dict]] | None:
    """``XINFO STREAM`` and ``XINFO GROUPS`` of ``keys.stream``, or None when the stream does not exist.

    Returns:
        ``(info, groups)`` as redis-py parses them (``length``, ``first-entry``,
        ``max-deleted-entry-id``, ``entries-added``…; per group ``name``, ``pending``, ``lag``,
        ``last-delivered-id``, ``entries-read``).

    Raises:
        redis.exceptions.RedisError: anything but a missing stream.
    """
    # One round trip, in this order: XINFO STREAM before XINFO GROUPS is what loss detection
    # needs (streamcore.loss); the ``ahead`` judgement reads the stream again when it must
    # (streamcore.groups.settled_last_generated).
    async with r.pipeline(transaction=False) as pipe:
        pipe.xinfo_stream(keys.stream)
        pipe.xinfo_groups(keys.stream)
        info, groups = await pipe.execute(raise_on_error=False)
    for reply in (info, groups):
        if isinstance(reply, Exception):
            if is_no_such_key(reply):
                return None
            raise reply
    return info, groups


async def ensure_group(r: aioredis.Redis, keys: Keys, start_id: str = "0") -> bool:
    """Create the consumer group with ``XGROUP CREATE ... MKSTREAM``, tolerating ``BUSYGROUP``.

    Args:
        start_id: where a new group starts reading; ``0`` so orders accepted before any worker
            started are processed (case C11).

    Returns:
        True if this call created the group, False if it already existed.

    Raises:
        redis.exceptions.RedisError: any other error.
    """
    try:
        await r.xgroup_create(keys.stream, keys.group, id=start_id, mkstream=True)
    except ResponseError as exc:
        if is_busygroup(exc):
            return False
        raise
    logger.info("created consumer group %s on %s at %s", keys.group, keys.stream, start_id)
    return True


# One call appends one or many orders (the producer sends each batch of concurrent requests as
# one call: one script run instead of one per order cost Redis about a third of its CPU per order
# and the producer a reply per order to read).
# KEYS: stream, trim floor, then per order: idempotency key (the stream key again for none),
#       order index
# ARGV: idempotency TTL s, order index TTL s, then per order: body hash, n, then n field/value items
# Reply: one item per order, in order: {1, id} (appended), {0, "id|hash"} (replayed), or that
# order's error as an error reply nested in the array (the orders after it still run): an error
# about the order's own keys or arguments (WRONGTYPE, ERR). An error about the server (READONLY
# on a demoted primary, OOM, NOREPLICAS, MASTERDOWN...) is the whole call's error reply instead:
# a server refuses the first write of the call, so nothing of it was written, and the client must
# see it as the command's reply (redis-py's Sentinel connection reconnects to the new primary only
# on a READONLY reply to the command itself; nested in the array, the producer stayed on the
# demoted primary, 503 on every append, until restarted).
# "No idempotency key" is spelt as the stream key, not "": every key a script names must match
# the ACL user's key patterns and (Redis Cluster) hash to the stream's slot.
# A replay writes too (the record's TTL starts again): a WAIT after it (REDIS_WAIT_REPLICAS) then
# waits for the replicas to have everything up to now, the first append included. A replay that
# wrote nothing left WAIT counting from the connection's own last write, which Redis >= 7.2 and
# Valkey do not move for reads: a retry after a 503 on another pooled connection got a 201 that no
# replica had confirmed.
# The trim floor is read once: nothing else runs while the script does.
_APPEND = """
local stream = KEYS[1]
local idem_ttl, index_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local head = {'XADD', stream}
local floor = redis.call('GET', KEYS[2])
if floor then
  table.insert(head, 'MINID'); table.insert(head, '~'); table.insert(head, floor)
end
table.insert(head, '*')
local out = {}
local a = 3
for k = 3, #KEYS, 2 do
  local idem, index, hash, n = KEYS[k], KEYS[k + 1], ARGV[a], tonumber(ARGV[a + 1])
  local first = a + 2
  a = first + n
  local ok, reply = pcall(function()
    if idem ~= stream then
      local prior = redis.call('GET', idem)
      if prior then
        redis.call('EXPIRE', idem, idem_ttl)
        return {0, prior}
      end
    end
    local args = {unpack(head)}
    for i = first, first + n - 1 do args[#args + 1] = ARGV[i] end
    local id = redis.call(unpack(args))
    redis.call('SET', index, id, 'EX', index_ttl)
    if idem ~= stream then
      redis.call('SET', idem, id .. '|' .. hash, 'EX', idem_ttl)
    end
    return {1, id}
  end)
  if ok then
    out[#out + 1] = reply
  else
    local err = type(reply) == 'table' and reply.err or tostring(reply)
    if string.sub(err, 1, 10) ~= 'WRONGTYPE ' and string.sub(err, 1, 4) ~= 'ERR ' then
      return redis.error_reply(err)
    end
    out[#out + 1] = {err = err}
  end
end
return out
"""


@dataclass(slots=True)
class AppendResult:
    """Outcome of :func:`append_order` (read-only by contract; not frozen: one is built per
    order on the ingest path, and a frozen dataclass builds at a third of the speed).

    Attributes:
        entry_id: the entry ID (new, or the one the idempotency key first produced).
        created: False when the idempotency key replayed an earlier append.
        same_body: on a replay, whether the body hash matches the first request's.
    """

    entry_id: str
    created: bool
    same_body: bool = True


class Scripts:
    """The Lua scripts, registered once per client (``EVALSHA`` with ``EVAL`` fallback)."""

    def __init__(self, r: aioredis.Redis) -> None:
        self.append = r.register_script(_APPEND)
        self.dead_letter = r.register_script(_DEAD_LETTER)


def append_call(
    keys: Keys,
    fields: dict[str, str],
    order_id: str,
    *,
    idempotency_key: str | None = None,
    body_hash: str = "",
    idempotency_ttl_s: int = 86400,
    order_index_ttl_s: int = ORDER_INDEX_TTL_S,
) -> tuple[list[str], list[str]]:
    """The ``(KEYS, ARGV)`` of the append script for one order (see :func:`append_order`); its
    reply is a list of one item, read with ``append_result(reply[0])``.

    To append many orders in one call, take the head (:func:`append_head`) once and concatenate
    each order's part (:func:`append_part`), as :class:`producer.appender.Appender` does.
    """
    head_keys, head_args = append_head(keys, idempotency_ttl_s=idempotency_ttl_s, order_index_ttl_s=order_index_ttl_s)
    order_keys, order_args = append_part(keys, fields, order_id, idempotency_key=idempotency_key, body_hash=body_hash)
    return [*head_keys, *order_keys], [*head_args, *order_args]


def append_head(keys: Keys, *, idempotency_ttl_s: int = 86400,
                order_index_ttl_s: int = ORDER_INDEX_TTL_S) -> tuple[list[str], list[str]]:
    """The part of the append script's ``KEYS`` and ``ARGV`` that comes once per call, before
    the orders' parts (:func:`append_part`): ``[stream, trim floor]`` and ``[idempotency TTL s,
    order index TTL s]``."""
    return [keys.stream, keys.trim_floor], [str(idempotency_ttl_s), str(order_index_ttl_s)]


def append_part(
    keys: Keys,
    fields: dict[str, str],
    order_id: str,
    *,
    idempotency_key: str | None = None,
    body_hash: str = "",
) -> tuple[list[str], list[str]]:
    """One order's part of the append script's ``KEYS`` and ``ARGV`` (after
    :func:`append_head`): ``[idempotency key or the stream key, order index key]`` and ``[body
    hash, number of field/value items, field, value, ...]``."""
    flat: list[str] = []
    for k, v in fields.items():
        flat += [k, v]
    idem = keys.idempotency(idempotency_key) if idempotency_key is not None else keys.stream
    return [idem, keys.order_index(order_id)], [body_hash, str(len(flat)), *flat]


def append_result(reply: list, body_hash: str = "") -> AppendResult:
    """Read one order's item of the append script's reply, ``[created, id or "id|hash"]``, into
    an :class:`AppendResult`."""
    created, value = reply
    if int(created):
        return AppendResult(value, True)
    entry_id, _, prior_hash = value.partition("|")
    return AppendResult(entry_id, False, prior_hash == body_hash)


async def append_order(
    r: aioredis.Redis,
    keys: Keys,
    fields: dict[str, str],
    order_id: str,
    *,
    scripts: Scripts,
    idempotency_key: str | None = None,
    body_hash: str = "",
    idempotency_ttl_s: int = 86400,
    order_index_ttl_s: int = ORDER_INDEX_TTL_S,
) -> AppendResult:
    """Append one order with ``XADD`` (atomically with its index and idempotency record).

    Trimming: when the reclaimer has published a safe floor (``keys.trim_floor``), the XADD
    carries ``MINID ~ floor``, which only drops entries every group has delivered and
    acknowledged; without a floor nothing is trimmed here (case C16).

    For pipelines, use :func:`append_call` and :func:`append_result` (awaiting a script on a
    pipeline only queues it).

    Args:
        fields: from :func:`streamcore.envelope.encode`.
        order_id: the orderId as text, for the ``keys.order_index`` key.
        idempotency_key: the ``Idempotency-Key`` header; a second call with it returns the first
            entry ID with ``created=False`` and does not append (case C24).
        body_hash: a digest of the request body, compared on replay.
        idempotency_ttl_s: how long the idempotency record lives, seconds.
        order_index_ttl_s: how long ``keys.order_index(order_id)`` (orderId → entry ID, read by
            ``GET /orders/{orderId}``) lives, seconds; one key per order must not outlive retention.

    Raises:
        redis.exceptions.RedisError: the append failed; nothing was appended.
    """
    script_keys, script_args = append_call(
        keys, fields, order_id, idempotency_key=idempotency_key, body_hash=body_hash, idempotency_ttl_s=idempotency_ttl_s,
        order_index_ttl_s=order_index_ttl_s,
    )
    (reply,) = await scripts.append(keys=script_keys, args=script_args, client=r)
    if isinstance(reply, Exception):
        raise reply
    return append_result(reply, body_hash)


# KEYS: stream, dlq, dlq index
# ARGV: group, consumer, entry id, deliveries, error, first seen ms, now ms, order id,
#       expected owner ('' = any), min idle ms ('' = any), reason, delete source ('1' = XDEL)
# The owner/idle guard: a worker whose lease was taken while it handled the entry (SIGSTOP, GC
# pause, handler slower than CLAIM_IDLE_MS) must not dead-letter it on its stale delivery count
# while the new owner may be about to succeed; and a claim pass must not dead-letter an entry
# whose owner renewed its lease after the scan (found by attacking a running stack).
# Lua strings are bytes: the original fields are copied byte-exact, whatever their encoding.
_DEAD_LETTER = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return {0, ''} end
if ARGV[9] ~= '' and p[1][2] ~= ARGV[9] then return {0, ''} end
if ARGV[10] ~= '' and tonumber(p[1][3]) < tonumber(ARGV[10]) then return {0, ''} end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if #e == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  return {2, ''}
end
local args = {'XADD', KEYS[2], '*'}
for _, v in ipairs(e[1][2]) do args[#args + 1] = v end
local meta = {'source_id', ARGV[3], 'source_stream', KEYS[1], 'group', ARGV[1], 'reason', ARGV[11],
  'error', ARGV[5], 'deliveries', ARGV[4], 'consumer', ARGV[2], 'owner', p[1][2],
  'first_seen_ms', ARGV[6], 'dead_lettered_ms', ARGV[7]}
for _, v in ipairs(meta) do args[#args + 1] = v end
local id = redis.call(unpack(args))
-- Acked only once the dead letter is written: a script is not rolled back, so an XADD refused
-- (a dead-letter key of another type: WRONGTYPE) must leave the entry pending, not lost.
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[12] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
if ARGV[8] ~= '' then redis.call('SET', KEYS[3], id) end
return {1, id}
"""

#: ``reason`` of a dead letter whose handler failed on its last allowed delivery.
REASON_MAX_DELIVERIES = "max_deliveries"


@dataclass(frozen=True, slots=True)
class DeadLetterResult:
    """Outcome of :func:`dead_letter`.

    Attributes:
        status: ``"dead_lettered"``; ``"not_pending"`` (someone acked it already: nothing done);
            ``"gone"`` (the entry's data was trimmed or deleted: it was acked, nothing appended).
            ``not_pending`` also covers a failed ``owner``/``min_idle_ms`` guard (nothing done).
        dlq_id: the dead-letter stream entry ID when ``status == "dead_lettered"``.
    """

    status: str
    dlq_id: str | None = None


async def dead_letter(
    r: aioredis.Redis,
    keys: Keys,
    entry_id: str,
    *,
    scripts: Scripts,
    consumer: str,
    deliveries: int,
    error: str,
    order_id: str = "",
    first_seen_ms: int | None = None,
    owner: str | None = None,
    min_idle_ms: int | None = None,
    reason: str = REASON_MAX_DELIVERIES,
    delete_source: bool = False,
) -> DeadLetterResult:
    """Move one pending entry to the dead-letter stream: ``XADD`` there and ``XACK`` here (and
    ``XDEL`` of the source entry when ``delete_source``), atomically in one Lua script.

    The entry must still be in the group's PEL (checked with ``XPENDING`` inside the script), so
    an order acked by another worker meanwhile is never dead-lettered too.

    The dead-letter entry holds the original entry's fields first, byte-exact (the script copies
    Redis's bytes, so a field that is not UTF-8 survives unchanged), then the metadata
    ``source_id``, ``source_stream``, ``group``, ``reason``, ``error``, ``deliveries``,
    ``consumer``, ``owner`` (the PEL owner), ``first_seen_ms``, ``dead_lettered_ms``. Read as a
    dict (later fields win), the metadata wins over an original field of the same name; XRANGE
    still returns both.

    Args:
        consumer: who dead-letters it (recorded; the PEL owner is recorded as ``owner``).
        deliveries: delivery count from XPENDING (``times_delivered``).
        error: the last error, truncated to 1000 characters.
        first_seen_ms: when the order was accepted (defaults to the entry ID's ms part).
        owner: when given, dead-letter only while this consumer still owns the entry (else
            ``not_pending``): a worker that lost its lease never dead-letters on a stale count.
        min_idle_ms: when given, dead-letter only if the entry has been idle at least this long
            (a lease renewed since the caller's scan wins).
        reason: short reason code recorded as ``reason``: :data:`REASON_MAX_DELIVERIES`, or an
            :data:`streamcore.envelope.POISON_REASONS` code for an entry that can never succeed.
        delete_source: also ``XDEL`` the entry from the order stream (``DEAD_LETTER_XDEL``);
            by default it stays there, readable in the history.

    Raises:
        redis.exceptions.RedisError: the script failed; the entry stays pending.
    """
    now_ms = int(time.time() * 1000)
    first = first_seen_ms if first_seen_ms is not None else int(entry_id.split("-")[0])
    code, dlq_id = await scripts.dead_letter(
        keys=[keys.stream, keys.dlq, keys.dlq_index(order_id or "")],
        args=[keys.group, consumer, entry_id, deliveries, error[:1000], first, now_ms, order_id,
              owner or "", "" if min_idle_ms is None else int(min_idle_ms), reason, "1" if delete_source else "0"],
        client=r,
    )
    code = int(code)
    if code == 1:
        return DeadLetterResult("dead_lettered", dlq_id)
    return DeadLetterResult("not_pending" if code == 0 else "gone")
