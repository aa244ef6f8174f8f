"""Reading the scaling signals of consumer groups from Redis, one pipelined round trip per poll.

Per (stream, group) one pipeline sends ``XINFO STREAM``, ``XINFO GROUPS``, ``XINFO CONSUMERS``
and the ``XPENDING`` summary. From the answers:

* **lag** (undelivered entries, i.e. after the group's ``last-delivered-id``): Redis's own
  ``lag`` field is used only when nothing was deleted or trimmed past the group's position.
  Otherwise the position decides when it can (``last-delivered-id`` at the stream's
  ``last-generated-id`` -> 0; first entry after the position -> all ``length`` entries), and
  the rest is counted with a capped exclusive ``XRANGE (<last-delivered-id> + COUNT cap`` (a
  second round trip, only in that case; ``lag_exact`` is false when the cap was hit). A NULL lag
  is never read as 0 (cases C17, C18): with counting disabled it stays ``None`` (unknown) and the
  policy holds. Values above the stream length are impossible and never trusted.
* **pending** split by consumer: entries owned by live consumers count as backlog; entries owned
  by consumers that are not live (their pod is gone) are reported apart as ``dead_pending`` (the
  reclaimer's work). Liveness comes from the caller's set of live consumer names (pod names, or
  the local actuator's children), never from ``idle`` (case C04); ``idle``/``inactive`` are only
  reported. Without a live set, all pending counts as live (the conservative choice).
* **rates** from the deltas of ``entries-added`` (arrivals) and ``entries-read`` (deliveries)
  between two polls of the same :class:`SignalReader`.
* **group state** (``group_state``), judged by :func:`streamcore.groups.classify_group` exactly as
  the producer's ``/stream/info`` judges it: ``missing`` (the stream exists, the group does not:
  its whole length is lag), ``ahead`` (its last-delivered-id is past the stream's
  last-generated-id: ``XGROUP SETID`` put it there and new entries are never delivered to it, so
  its lag is 0 and more consumers would not help), ``abandoned`` (``XINFO GROUPS`` ``pending`` > 0 and no consumer seen
  for ``abandoned_after_ms``: :func:`streamcore.groups.quiet_ms` of each ``XINFO CONSUMERS``
  entry), ``no-stream``, ``ok``, and ours, ``unreadable`` (see below).
* **faults are per stream.** An error reply about one stream (``WRONGTYPE`` because the key is a
  string or a hash, ``NOPERM`` for that key, any other ``ResponseError``) makes only that
  stream *unreadable* (``lag_source`` ``error``, ``error`` set, backlog unknown); the other
  streams are read as usual, and ``Signals.backlog_floor`` keeps what is known. Only a server
  that cannot answer at all (connection refused or lost, timeout, ``LOADING``, ``BUSY`` and the
  other "not now" replies of :func:`streamcore.connection.is_transient`) makes the whole
  reading ``reachable=False``.

Units: counts are stream entries; times in ``*_ms`` are milliseconds; rates are entries per
second; ``observed_at`` is Unix time in seconds.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcore.connection import is_transient
from streamcore.keys import partition_keys
from streamcore.groups import ABANDONED_AFTER_MS, MERGE_ORDER, classify_group, quiet_ms, settled_last_generated

logger = logging.getLogger(__name__)

Combine = Literal['sum', 'max']


@dataclasses.dataclass(frozen=True)
class ConsumerSignals:
    """One consumer of a group (``XINFO CONSUMERS``).

    ``pending``: entries it owns; ``idle_ms``: since its last attempted interaction;
    ``inactive_ms``: since its last successful interaction (Redis >= 7.2 and Valkey; ``None`` on
    Redis 7.0); ``live``: its name is in the live set (or no live set was given).
    """

    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None
    live: bool


@dataclasses.dataclass(frozen=True)
class StreamSignals:
    """The signals of one (stream, group) pair.

    ``length`` (``XINFO STREAM`` length), ``entries_added`` (``entries-added``; ``None`` if the
    stream is missing), ``entries_read`` (``XINFO GROUPS`` ``entries-read``; may be ``None``),
    ``last_delivered_id``, ``reported_lag`` (Redis's ``lag``, ``None`` for NULL), ``lag`` (our
    undelivered count, ``None`` = unknown), ``lag_exact``, ``lag_source`` (``xinfo``,
    ``position``, ``xrange``, ``xrange-capped``, ``no-stream``, ``no-group``, ``unknown``,
    ``error``), ``pending`` (``XPENDING`` total), ``live_pending``/``dead_pending`` (split by
    consumer liveness), ``oldest_pending_id``, ``consumers``, ``arrival_rate``/``delivery_rate``
    (entries/s since the previous poll; ``None`` on the first poll or when unknown), ``error``
    (the error reply that made this stream unreadable, e.g. ``WRONGTYPE Operation against a key
    holding the wrong kind of value``; ``None`` when it was read), ``group_state`` (``ok``,
    ``missing``, ``ahead``, ``abandoned``, ``no-stream`` from :func:`streamcore.groups.classify_group`, or
    ``unreadable``).
    """

    stream: str
    group: str
    stream_exists: bool
    group_exists: bool
    length: int
    entries_added: int | None
    entries_read: int | None
    last_delivered_id: str | None
    reported_lag: int | None
    lag: int | None
    lag_exact: bool
    lag_source: str
    pending: int
    live_pending: int
    dead_pending: int
    oldest_pending_id: str | None
    consumers: tuple[ConsumerSignals, ...]
    arrival_rate: float | None = None
    delivery_rate: float | None = None
    error: str | None = None
    group_state: str = 'ok'

    @property
    def backlog(self) -> int | None:
        """Lag + pending owned by live consumers (entries); ``None`` when the lag is unknown."""
        return None if self.lag is None else self.lag + self.live_pending

    @property
    def least_quiet_ms(self) -> int | None:
        """How long (ms) the most recently seen consumer of the group has been quiet
        (:func:`streamcore.groups.quiet_ms`); ``None`` without consumers."""
        quiet = [q for c in self.consumers
                 if (q := quiet_ms({'inactive': c.inactive_ms, 'idle': c.idle_ms})) is not None]
        return min(quiet, default=None)

    @property
    def backlog_floor(self) -> int:
        """What the backlog is at least (entries): the backlog when known, else the live
        pending entries (0 for an unreadable stream)."""
        backlog = self.backlog
        return self.live_pending if backlog is None else backlog

    @classmethod
    def unreadable(cls, stream: str, group: str, error: BaseException) -> StreamSignals:
        """The signals of a stream whose reading failed with the error reply ``error``.

        ``error`` text: the reply (``WRONGTYPE Operation against ...``); redis-py strips the
        code of the replies it maps to a subclass, so those carry the class name instead
        (``NoPermissionError: ...`` for ``NOPERM``).
        """
        text = str(error) if type(error) is ResponseError else f'{type(error).__name__}: {error}'
        return cls(stream, group, False, False, 0, None, None, None, None, None, False, 'error',
                   0, 0, 0, None, (), error=text, group_state='unreadable')


@dataclasses.dataclass(frozen=True)
class Signals:
    """One poll's signals over all configured streams (implements ``policy.BacklogObservation``).

    ``reachable``: Redis answered; ``error``: why not (or why streams could not be read: one
    ``<stream>: <error reply>`` per unreadable stream, joined by ``; ``); ``combine``: ``sum``
    or ``max`` of the per-stream backlogs; ``observed_at``: Unix seconds.
    """

    reachable: bool
    streams: tuple[StreamSignals, ...] = ()
    combine: Combine = 'sum'
    error: str | None = None
    observed_at: float = 0.0

    def _combined(self, values: Sequence[int | None]) -> int | None:
        if not self.reachable or any(v is None for v in values):
            return None
        known = [v for v in values if v is not None]
        if not known:
            return 0
        return sum(known) if self.combine == 'sum' else max(known)

    @property
    def backlog(self) -> int | None:
        """Combined backlog in entries (lag + live pending); ``None`` if any part is unknown."""
        return self._combined([s.backlog for s in self.streams])

    @property
    def backlog_floor(self) -> int | None:
        """A lower bound of the combined backlog from what could be read (entries): each
        stream's backlog, or its live pending entries when its lag is unknown, 0 for an
        unreadable one. ``None`` when Redis was not reachable. Equals :attr:`backlog` when that
        is known; the policy scales *up* on it while part of the backlog is unknown, never down.
        """
        return self._combined([s.backlog_floor for s in self.streams])

    @property
    def unreadable(self) -> tuple[StreamSignals, ...]:
        """The streams that could not be read this poll (``error`` set)."""
        return tuple(s for s in self.streams if s.error is not None)

    def in_state(self, state: str) -> tuple[StreamSignals, ...]:
        """The streams whose ``group_state`` is ``state`` (e.g. ``missing``, ``abandoned``)."""
        return tuple(s for s in self.streams if s.group_state == state)

    @property
    def lag(self) -> int | None:
        """Combined undelivered entries; ``None`` if unknown."""
        return self._combined([s.lag for s in self.streams])

    @property
    def live_pending(self) -> int:
        """Pending entries owned by live consumers, summed over streams."""
        return sum(s.live_pending for s in self.streams)

    @property
    def dead_pending(self) -> int:
        """Pending entries owned by consumers that are not live, summed over streams."""
        return sum(s.dead_pending for s in self.streams)

    @property
    def lag_exact(self) -> bool:
        """Whether every stream's lag is exact (not unknown, not a capped count)."""
        return self.reachable and all(s.lag_exact for s in self.streams)

    @property
    def arrival_rate(self) -> float | None:
        """Entries appended per second over all streams; ``None`` if unknown."""
        rates = [s.arrival_rate for s in self.streams]
        return None if not rates or any(r is None for r in rates) else sum(r for r in rates if r is not None)

    @property
    def delivery_rate(self) -> float | None:
        """Entries delivered to the groups per second (``entries-read`` delta); ``None`` if unknown."""
        rates = [s.delivery_rate for s in self.streams]
        return None if not rates or any(r is None for r in rates) else sum(r for r in rates if r is not None)

    def to_status(self) -> dict[str, Any]:
        """A JSON-ready summary for ``status.signals`` of the StreamAutoscaler (camelCase).

        Top-level unknowns are ``None`` so that the merge patch *removes* a previous value (an
        unknown backlog must not keep showing the last known one); inside the per-stream list,
        which is replaced as a whole, unknown values are simply left out.
        """
        def rate(value: float | None) -> str | None:
            return None if value is None else f"{value:.2f}"

        def known(item: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in item.items() if v is not None}

        return {
            'redisReachable': self.reachable,
            'backlog': self.backlog,
            'lag': self.lag,
            'lagExact': self.lag_exact,
            'livePending': self.live_pending,
            'deadPending': self.dead_pending,
            'arrivalRate': rate(self.arrival_rate),
            'deliveryRate': rate(self.delivery_rate),
            'error': self.error,
            'streams': [
                {'stream': s.stream, 'group': s.group, 'groupState': s.group_state, 'lagSource': s.lag_source,
                 'error': s.error}
                if s.error is not None else
                known({
                    'stream': s.stream, 'group': s.group, 'groupState': s.group_state, 'length': s.length,
                    'lag': s.lag, 'lagSource': s.lag_source, 'reportedLag': s.reported_lag,
                    'pending': s.pending, 'livePending': s.live_pending, 'deadPending': s.dead_pending,
                    'consumers': len(s.consumers), 'liveConsumers': sum(c.live for c in s.consumers),
                    'lastDeliveredId': s.last_delivered_id,
                })
                for s in self.streams
            ],
        }


def parse_id(entry_id: str | None) -> tuple[int, int]:
    """``"<ms>-<seq>"`` -> ``(ms, seq)``; ``None`` or ``"0-0"`` -> ``(0, 0)``. Raises ``ValueError``."""
    if not entry_id:
        return (0, 0)
    ms, _, seq = str(entry_id).partition('-')
    return (int(ms), int(seq or 0))


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _field(mapping: dict[Any, Any], name: str) -> Any:
    """A field of a redis-py reply dict, whether the client decodes responses or not."""
    if name in mapping:
        return _text(mapping[name])
    return _text(mapping.get(name.encode()))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _is_missing(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, ResponseError) and ('no such key' in text or 'NOGROUP' in text)


def _sum(values: Sequence[int | float | None]) -> Any:
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


#: Which state a partitioned stream shows when its partitions disagree: the first any has
#: (:data:`streamcore.groups.MERGE_ORDER`, after our own ``unreadable``).
_STATE_ORDER = ('unreadable', *MERGE_ORDER)


def merge_partitions(stream: str, group: str, parts: Sequence[StreamSignals]) -> StreamSignals:
    """One :class:`StreamSignals` for a stream split into partitions (``STREAM_PARTITIONS``):
    counts, lag and rates are summed over the partitions (unknown when any partition's is),
    ``lag_exact`` only when every partition's is, ``last_delivered_id`` the newest and
    ``oldest_pending_id`` the oldest, consumers merged by name (pending summed, the smallest
    idle/inactive times), the group state the first of ``unreadable``, ``ahead``, ``abandoned``, ``missing``,
    ``no-stream``, ``ok`` that any partition shows, errors joined."""
    consumers: dict[str, ConsumerSignals] = {}
    for p in parts:
        for c in p.consumers:
            seen = consumers.get(c.name)
            if seen is None:
                consumers[c.name] = c
            else:
                inactive = [v for v in (seen.inactive_ms, c.inactive_ms) if v is not None]
                consumers[c.name] = ConsumerSignals(c.name, seen.pending + c.pending, min(seen.idle_ms, c.idle_ms),
                                                    min(inactive) if inactive else None, seen.live and c.live)
    sources = sorted({p.lag_source for p in parts})
    delivered = [p.last_delivered_id for p in parts if p.last_delivered_id]
    oldest = [p.oldest_pending_id for p in parts if p.oldest_pending_id]
    errors = [p.error for p in parts if p.error is not None]
    states = [p.group_state for p in parts]
    return StreamSignals(
        stream, group,
        any(p.stream_exists for p in parts), any(p.group_exists for p in parts),
        sum(p.length for p in parts), _sum([p.entries_added for p in parts]), _sum([p.entries_read for p in parts]),
        max(delivered, key=parse_id) if delivered else None,
        _sum([p.reported_lag for p in parts]), _sum([p.lag for p in parts]),
        all(p.lag_exact for p in parts), sources[0] if len(sources) == 1 else '+'.join(sources),
        sum(p.pending for p in parts), sum(p.live_pending for p in parts), sum(p.dead_pending for p in parts),
        min(oldest, key=parse_id) if oldest else None, tuple(consumers.values()),
        _sum([p.arrival_rate for p in parts]), _sum([p.delivery_rate for p in parts]),
        '; '.join(errors) if errors else None,
        next(state for state in _STATE_ORDER + tuple(states) if state in states),
    )


class SignalReader:
    """Reads :class:`Signals` for fixed (stream, group) pairs, keeping state for rates.

    ``r``: an asyncio client owned by the caller; ``streams``: (stream, group) pairs;
    ``combine``: ``sum`` or ``max``; ``lag_count_limit``: the ``XRANGE`` cap when the lag must be
    counted (0: never count, the lag stays unknown); ``abandoned_after_ms``: quiet time (ms) after
    which a group holding pending entries counts as abandoned (default
    :data:`streamcore.groups.ABANDONED_AFTER_MS`); ``clock``: monotonic seconds for rates;
    ``partitions``/``cluster``: each configured stream is ``STREAM_PARTITIONS`` partition streams
    (:func:`streamcore.keys.partition_keys`), read one by one and reported as one stream, their
    sum (:func:`merge_partitions`): a target's lag is the sum over its partitions. No CRD field:
    the operator takes both from its own ``STREAM_PARTITIONS``/``REDIS_CLUSTER``.
    """

    def __init__(
        self,
        r: aioredis.Redis,
        streams: Sequence[tuple[str, str]],
        *,
        combine: Combine = 'sum',
        lag_count_limit: int = 10_000,
        abandoned_after_ms: int = ABANDONED_AFTER_MS,
        clock: Callable[[], float] = time.monotonic,
        partitions: int = 1,
        cluster: bool = False,
    ) -> None:
        self.r = r
        self.streams = tuple(streams)
        #: The partition streams read for each configured stream (``STREAM_PARTITIONS``, Redis
        #: Cluster mode: :func:`streamcore.keys.partition_keys`); one, the stream itself, by default.
        self.partitions = partitions
        self._parts = [(stream, group, tuple(k.stream for k in partition_keys(stream, group, stream, partitions,
                                                                               cluster=cluster)))
                       for stream, group in self.streams]
        self.combine = combine
        self.lag_count_limit = lag_count_limit
        self.abandoned_after_ms = abandoned_after_ms
        self.clock = clock
        self._previous: dict[tuple[str, str], tuple[float, int | None, int | None]] = {}

    async def read(self, live_consumers: Collection[str] | None) -> Signals:
        """Poll Redis once. ``live_consumers``: names of consumers known to be alive (``None``:
        unknown, all pending counts as live).

        Never raises for Redis failures: an unreachable server gives ``reachable=False``; an
        error reply about one stream marks that stream unreadable (see the module docstring).
        """
        observed_at = time.time()
        pipe = self.r.pipeline(transaction=False)
        pairs = [(key, group) for _, group, keys in self._parts for key in keys]
        for stream, group in pairs:
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
            pipe.xinfo_consumers(stream, group)
            pipe.xpending(stream, group)
        try:
            replies = await pipe.execute(raise_on_error=False)
            now = self.clock()
            read = []
            for i, (stream, group) in enumerate(pairs):
                try:
                    read.append(await self._one(stream, group, replies[4 * i: 4 * i + 4], live_consumers, now))
                except ResponseError as e:
                    if is_transient(e):
                        raise  # LOADING, BUSY...: the server, not this stream
                    # This stream only (WRONGTYPE, NOPERM...): the others are still read.
                    self._previous.pop((stream, group), None)
                    read.append(StreamSignals.unreadable(stream, group, e))
            results = []
            at = 0
            for stream, group, keys in self._parts:
                part = read[at:at + len(keys)]
                at += len(keys)
                results.append(part[0] if len(keys) == 1 and keys[0] == stream else merge_partitions(stream, group, part))
        except (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException) as e:
            return Signals(False, (), self.combine, f"Redis unreachable: {e}", observed_at)
        except RedisError as e:  # e.g. NOAUTH/WRONGPASS, LOADING: we cannot read, so we know nothing
            return Signals(False, (), self.combine, f"Redis error: {e}", observed_at)
        errors = '; '.join(f'{s.stream}: {s.error}' for s in results if s.error is not None)
        return Signals(True, tuple(results), self.combine, errors or None, observed_at)

    async def _one(
        self,
        stream: str,
        group: str,
        replies: list[Any],
        live: Collection[str] | None,
        now: float,
    ) -> StreamSignals:
        info, groups, consumers_reply, pending_reply = replies
        for reply in replies:
            if isinstance(reply, (RedisConnectionError, RedisTimeoutError, OSError)):
                raise reply
            if isinstance(reply, Exception) and not _is_missing(reply):
                raise reply

        if isinstance(info, Exception):  # the stream does not exist: nothing to process
            return StreamSignals(stream, group, False, False, 0, None, None, None, None, 0, True,
                                 'no-stream', 0, 0, 0, None, (), group_state='no-stream')

        length = int(_field(info, 'length') or 0)
        entries_added = _int(_field(info, 'entries-added'))
        last_generated = _field(info, 'last-generated-id')
        max_deleted = _field(info, 'max-deleted-entry-id')
        first_entry = _field(info, 'first-entry')
        first_id = _text(first_entry[0]) if first_entry else None

        mine = None if isinstance(groups, Exception) else next(
            (g for g in groups if _field(g, 'name') == group), None)
        if mine is None:
            # No group yet: consumers create it on start and read what is there (case C11), so
            # every entry counts as undelivered.
            return StreamSignals(stream, group, True, False, length, entries_added, None, None, None,
                                 length, True, 'no-group', 0, 0, 0, None, (),
                                 self._rate(stream, group, now, entries_added, None)[0], None,
                                 group_state='missing')

        last_delivered = _field(mine, 'last-delivered-id')
        entries_read = _int(_field(mine, 'entries-read'))
        reported = _int(_field(mine, 'lag'))
        lag, exact, source = await self._lag(stream, length, last_delivered, last_generated,
                                             max_deleted, first_id, reported)

        consumers: list[ConsumerSignals] = []
        if not isinstance(consumers_reply, Exception):
            for c in consumers_reply:
                name = _field(c, 'name')
                inactive = _field(c, 'inactive')
                consumers.append(ConsumerSignals(
                    name=name,
                    pending=int(_field(c, 'pending') or 0),
                    idle_ms=int(_field(c, 'idle') or 0),
                    inactive_ms=None if inactive is None else int(inactive),
                    live=live is None or name in live,
                ))
        pending_total = 0 if isinstance(pending_reply, Exception) else int(_field(pending_reply, 'pending') or 0)
        oldest = None if isinstance(pending_reply, Exception) else _field(pending_reply, 'min')
        per_consumer = {} if isinstance(pending_reply, Exception) else {
            _field(c, 'name'): int(_field(c, 'pending') or 0) for c in (_field(pending_reply, 'consumers') or [])
        }
        # XPENDING's per-consumer split is authoritative for ownership (XINFO CONSUMERS also
        # lists consumers that own nothing); both come from the same round trip.
        live_pending = sum(n for name, n in per_consumer.items() if live is None or name in live)
        dead_pending = max(0, pending_total - live_pending)

        # entries-read can be NULL (e.g. on Redis 7.0 for a group made at 0 on an empty stream);
        # then deliveries are derived as entries added minus those not yet delivered.
        delivered = entries_read
        if delivered is None and entries_added is not None and lag is not None and exact:
            delivered = entries_added - lag
        arrival, delivery = self._rate(stream, group, now, entries_added, delivered)
        state = classify_group(
            stream_exists=True, group_exists=True, pending=int(_field(mine, 'pending') or 0),
            consumer_quiet_ms=[quiet_ms({'inactive': c.inactive_ms, 'idle': c.idle_ms}) for c in consumers],
            abandoned_after_ms=self.abandoned_after_ms,
            last_delivered_id=last_delivered,
            last_generated_id=await settled_last_generated(self.r, stream, last_generated, [last_delivered]))
        return StreamSignals(stream, group, True, True, length, entries_added, entries_read, last_delivered,
                             reported, lag, exact, source, pending_total, live_pending, dead_pending,
                             oldest, tuple(consumers), arrival, delivery, group_state=state)

    async def _lag(
        self,
        stream: str,
        length: int,
        last_delivered: str | None,
        last_generated: str | None,
        max_deleted: str | None,
        first_id: str | None,
        reported: int | None,
    ) -> tuple[int | None, bool, str]:
        """(lag, exact, source) for one group; see the module docstring for the rules."""
        position = parse_id(last_delivered)
        if length == 0 or position >= parse_id(last_generated):
            return 0, True, 'position'
        if first_id is not None and parse_id(first_id) > position:
            return length, True, 'position'  # everything left is after the group's position
        nothing_removed_past_position = parse_id(max_deleted) < position
        if reported is not None and 0 <= reported <= length and nothing_removed_past_position:
            return reported, True, 'xinfo'
        if reported is not None:
            logger.info("%s: distrusting lag %s (length %d, max deleted %s, position %s); counting",
                        stream, reported, length, max_deleted, last_delivered)
        if self.lag_count_limit <= 0:
            return None, False, 'unknown'
        entries = await self.r.xrange(stream, min=f"({last_delivered}", max='+', count=self.lag_count_limit)
        counted = min(len(entries), length)
        if len(entries) >= self.lag_count_limit:
            return counted, False, 'xrange-capped'
        return counted, True, 'xrange'

    def _rate(
        self, stream: str, group: str, now: float, added: int | None, read: int | None,
    ) -> tuple[float | None, float | None]:
        key = (stream, group)
        previous = self._previous.get(key)
        self._previous[key] = (now, added, read)
        if previous is None:
            return None, None
        then, added_then, read_then = previous
        elapsed = now - then
        if elapsed <= 0:
            return None, None

        def per_second(new: int | None, old: int | None) -> float | None:
            # A counter going backwards means the stream or group was recreated: unknown, not < 0.
            if new is None or old is None or new < old:
                return None
            return (new - old) / elapsed

        return per_second(added, added_then), per_second(read, read_then)
