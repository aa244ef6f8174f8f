"""One poll of one StreamAutoscaler: read, decide, act, explain.

:func:`reconcile` is what the kopf timer runs when a poll is due. It reads the target Deployment
and its pods (the live consumers), reads the Redis signals, asks the pure policy for a decision,
patches the Deployment's ``scale`` subresource when the count changes (not when ``paused`` or
``dryRun``), and returns an :class:`Outcome`: the new ``status``, the Events to post and whether
kopf should retry soon. It never posts or patches the StreamAutoscaler itself — the handler does,
through kopf — so the flow stays readable and testable.

Faults stay with their resource, and within a resource with their stream: a configured stream
that answers with an error reply (``WRONGTYPE``, ``NOPERM``...) sets ``Ready=False`` with reason
``StreamUnreadable`` (cleared on the first poll that reads every stream), posts one Warning
Event ``StreamUnreadable`` when it starts failing, and leaves ``RedisReachable`` true; the other
streams still scale the target up (never down) meanwhile. Each StreamAutoscaler has its own
timer, reader and history, so another resource's fault never touches this one.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler import policy
from autoscaler.actuators import KubeApi, KubeError, KubeNotFound
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.signals import SignalReader, Signals, StreamSignals
from streamcore import decisions
from streamcore.groups import ABANDONED_AFTER_MS

logger = logging.getLogger(__name__)

CONDITION_TYPES = ('Ready', 'Active', 'ScalingLimited', 'RedisReachable', 'LagExact', 'GroupMissing', 'GroupAbandoned',
                   'GroupAhead')

#: ``Ready`` reason and Warning Event reason when a configured stream answers with an error
#: reply (``WRONGTYPE``: the key is a string or a hash; ``NOPERM``; any other ``ResponseError``):
#: that stream's backlog is unknown, the others are still read and scale up (issue 9 item 6).
STREAM_UNREADABLE = 'StreamUnreadable'

#: Condition types (and ``True`` reasons) for the group states of :mod:`streamcore.groups`
#: (issue 9 item 7), with the same definitions as the producer's ``/stream/info``:
#: ``GroupMissing`` is True while a configured stream exists without its group (its whole
#: length counts as backlog); ``GroupAbandoned`` is True while a group holds pending entries and
#: none of its consumers was seen for ``spec.groupAbandonedAfterSeconds``; ``GroupAhead`` is True
#: while a group's last-delivered-id is past its stream's last-generated-id and the clock (``XGROUP SETID``
#: put it there: new entries are never delivered to it, and its lag reads 0). Each is False
#: (reasons ``GroupsPresent``, ``GroupsRead``, ``GroupsInStep``) once no stream is in that state, and Unknown
#: (reason ``RedisUnreachable`` or ``StreamUnreadable``) while a stream could not be read and
#: none is known to be in it.
GROUP_MISSING = 'GroupMissing'
GROUP_ABANDONED = 'GroupAbandoned'
GROUP_AHEAD = 'GroupAhead'

Condition = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class TargetRef:
    """``spec.scaleTargetRef``: a Deployment in the StreamAutoscaler's namespace."""

    name: str
    kind: str = 'Deployment'
    api_version: str = 'apps/v1'


@dataclasses.dataclass(frozen=True)
class RedisRef:
    """``spec.redis``: the URL's source and how to connect."""

    secret_name: str | None
    secret_key: str
    url: str | None
    tls: bool
    username: str | None


@dataclasses.dataclass(frozen=True)
class AutoscalerSpec:
    """The whole parsed ``spec`` of a StreamAutoscaler, CRD defaults applied."""

    target: TargetRef
    redis: RedisRef
    streams: tuple[tuple[str, str], ...]
    combine: str
    poll_interval_s: float
    lag_count_limit: int
    abandoned_after_ms: int
    paused: bool
    dry_run: bool
    rules: policy.PolicySpec

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> AutoscalerSpec:
        """Parse a StreamAutoscaler ``spec``. Raises ``ValueError`` naming the bad field."""
        ref = spec.get('scaleTargetRef') or {}
        if not ref.get('name'):
            raise ValueError('spec.scaleTargetRef.name is required')
        if ref.get('kind', 'Deployment') != 'Deployment' or ref.get('apiVersion', 'apps/v1') != 'apps/v1':
            raise ValueError('spec.scaleTargetRef must be an apps/v1 Deployment')
        redis_spec = spec.get('redis') or {}
        secret = redis_spec.get('urlSecretRef') or {}
        if not secret.get('name') and not redis_spec.get('url'):
            raise ValueError('spec.redis needs urlSecretRef.name (or url, for development)')
        streams = tuple((str(s.get('stream', '')), str(s.get('group', ''))) for s in spec.get('streams') or ())
        if not streams or any(not stream or not group for stream, group in streams):
            raise ValueError('spec.streams needs at least one {stream, group}')
        combine = spec.get('combine', 'sum')
        if combine not in ('sum', 'max'):
            raise ValueError('spec.combine must be sum or max')
        poll = float(spec.get('pollIntervalSeconds', 15))
        if poll <= 0:
            raise ValueError('spec.pollIntervalSeconds must be > 0')
        abandoned_s = float(spec.get('groupAbandonedAfterSeconds', ABANDONED_AFTER_MS / 1000))
        if abandoned_s <= 0:
            raise ValueError('spec.groupAbandonedAfterSeconds must be > 0')
        return cls(
            target=TargetRef(ref['name']),
            redis=RedisRef(secret.get('name'), secret.get('key', 'url'), redis_spec.get('url'),
                           bool(redis_spec.get('tls', False)), redis_spec.get('username')),
            streams=streams,
            combine=combine,
            poll_interval_s=poll,
            lag_count_limit=int(spec.get('lagCountLimit', 10_000)),
            abandoned_after_ms=round(abandoned_s * 1000),
            paused=bool(spec.get('paused', False)),
            dry_run=bool(spec.get('dryRun', False)),
            rules=policy.PolicySpec.from_spec(spec),
        )


def redis_url(url: str, *, tls: bool, username: str | None) -> str:
    """Apply ``spec.redis.tls`` (``rediss://``) and ``username`` (ACL user) to a URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = 'rediss' if tls and parts.scheme == 'redis' else parts.scheme
    netloc = parts.netloc
    if username:
        userinfo, _, host = netloc.rpartition('@')
        password = userinfo.partition(':')[2] if ':' in userinfo else ''  # kept percent-encoded as given
        user = urllib.parse.quote(username, safe='')
        netloc = f"{user}:{password}@{host}" if password else f"{user}@{host}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclasses.dataclass
class ResourceState:
    """What one StreamAutoscaler remembers between polls (kept in kopf's per-object memo).

    ``history``: the policy's recent recommendations and changes; ``last_status``: the status
    computed by the last poll (the object's own status may lag behind our patches, and Events
    are posted on transitions, so we compare with what we wrote); ``reader`` and ``reader_key``:
    the signal reader (it holds the previous counters for rates) and the config it was made for;
    ``next_poll``: monotonic seconds when the next poll is due; ``generation``: the spec
    generation of the last poll (a new generation polls at once).
    """

    history: policy.History = dataclasses.field(default_factory=policy.History)
    last_status: dict[str, Any] | None = None
    reader: SignalReader | None = None
    reader_key: tuple[Any, ...] = ()
    next_poll: float = 0.0
    generation: int | None = None

    def due(self, now: float, generation: int | None) -> bool:
        """Whether a poll is due at monotonic ``now`` (or the spec changed since the last one)."""
        return now >= self.next_poll or generation != self.generation


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """An Event to post: on the StreamAutoscaler (``on_target`` False) or its Deployment."""

    type: str  # Normal | Warning
    reason: str
    message: str
    on_target: bool = False


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Result of a poll: ``status`` to merge-patch, ``events`` to post, ``retry_in`` seconds
    (``None``: no retry needed), ``target`` (the Deployment body, for Events on it)."""

    status: dict[str, Any]
    events: tuple[EventSpec, ...] = ()
    retry_in: float | None = None
    target: dict[str, Any] | None = None
    error: str | None = None


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def conditions(previous: list[Mapping[str, Any]] | None, **states: tuple[str, str, str]) -> list[dict[str, Any]]:
    """Build ``status.conditions``; each keyword is ``Type=(status, reason, message)``.

    ``lastTransitionTime`` is kept from ``previous`` unless the status changed; types not given
    keep their previous entry.
    """
    old = {c.get('type'): c for c in previous or ()}
    result = []
    for kind in CONDITION_TYPES:
        if kind not in states:
            if kind in old:
                result.append(dict(old[kind]))
            continue
        status, reason, message = states[kind]
        before = old.get(kind) or {}
        since = before.get('lastTransitionTime') if before.get('status') == status else None
        result.append({'type': kind, 'status': status, 'reason': reason, 'message': message,
                       'lastTransitionTime': since or _now_iso()})
    return result


def _minutes(ms: int) -> str:
    return f'{ms / 60_000:.0f}m' if ms >= 60_000 else f'{ms / 1000:g}s'


def group_conditions(signals: Signals, abandoned_after_ms: int) -> tuple[Condition, Condition, Condition]:
    """``(GroupMissing, GroupAbandoned, GroupAhead)`` as ``(status, reason, message)`` from one poll's
    per-stream ``group_state`` (see :data:`GROUP_MISSING`). ``abandoned_after_ms``: the
    threshold, for the message."""
    if not signals.reachable:
        unknown = ('Unknown', 'RedisUnreachable', signals.error or 'Redis is unreachable')
        return unknown, unknown, unknown
    unreadable = ', '.join(s.stream for s in signals.unreadable)

    def otherwise(reason: str, text: str) -> tuple[str, str, str]:
        if unreadable:
            return 'Unknown', STREAM_UNREADABLE, f'cannot tell for {unreadable}: unreadable'
        return 'False', reason, text

    missing = signals.in_state('missing')
    abandoned = signals.in_state('abandoned')
    missing_condition = ('True', GROUP_MISSING, '; '.join(
        f'stream {s.stream} has {s.length} entries and no group {s.group}: all {s.length} count as backlog '
        f'until the group is created (by the producer or the first consumer)' for s in missing)
    ) if missing else otherwise('GroupsPresent', 'every existing stream has its group')

    def quiet(s: StreamSignals) -> str:
        least = s.least_quiet_ms
        return 'no consumer' if least is None else f'no consumer seen for {_minutes(least)}'

    abandoned_condition = ('True', GROUP_ABANDONED, '; '.join(
        f'group {s.group} of stream {s.stream} holds {s.pending} pending entries and {quiet(s)} '
        f'(threshold {_minutes(abandoned_after_ms)}): nobody reads it any more' for s in abandoned)
    ) if abandoned else otherwise('GroupsRead', 'no group holds pending entries without a consumer seen recently')
    ahead = signals.in_state('ahead')
    ahead_condition = ('True', GROUP_AHEAD, '; '.join(
        f'group {s.group} of stream {s.stream} is positioned at {s.last_delivered_id}, past the last entry and the '
        f'clock: orders appended now are not delivered to it until XGROUP SETID moves it back below them' for s in ahead)
    ) if ahead else otherwise('GroupsInStep', "no group's last-delivered-id is past its stream's last entry")
    return missing_condition, abandoned_condition, ahead_condition


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get('conditions') or () if c.get('type') == kind), {})


async def reconcile(**kwargs: Any) -> Outcome:
    """Run one poll; see :func:`_reconcile` for the arguments. Remembers the status it computed."""
    state: ResourceState = kwargs['state']
    if state.last_status is not None:
        kwargs['status'] = state.last_status
    outcome = await _reconcile(**kwargs)
    state.last_status = {**kwargs['status'], **outcome.status}
    return outcome


async def _reconcile(
    *,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    generation: int | None,
    state: ResourceState,
    api: KubeApi,
    redis_for: Callable[[str], aioredis.Redis],
    metrics: AutoscalerMetrics | None = None,
    now: float | None = None,
    partitions: int = 1,
    cluster: bool = False,
) -> Outcome:
    """Run one poll for StreamAutoscaler ``namespace/name``; see the module docstring.

    ``spec``/``status``: the resource's current fields; ``state``: its memory (mutated:
    history, reader); ``api``: the Kubernetes client; ``redis_for(url)``: a shared client per
    URL; ``now``: monotonic seconds (defaults to ``time.monotonic()``); ``partitions``/``cluster``:
    the operator's STREAM_PARTITIONS/REDIS_CLUSTER (every configured stream is read as that many
    partitions, its lag their sum: :class:`autoscaler.signals.SignalReader`). Never raises for
    Kubernetes or Redis failures: they become conditions, Events and ``retry_in``.
    """
    now = time.monotonic() if now is None else now
    key = f'{namespace}/{name}'
    previous_conditions = list(status.get('conditions') or ())
    base = {'observedGeneration': generation}

    def transition(kind: str, new_status: str) -> bool:
        return _condition(status, kind).get('status') != new_status

    def failed(reason: str, message: str, *, retry: bool = True, target: dict[str, Any] | None = None,
               **fields: Any) -> Outcome:
        """Ready=False with ``reason``; a Warning Event the first time (not on every retry)."""
        first = _condition(status, 'Ready').get('reason') != reason
        return Outcome({**base, **fields, 'reason': reason, 'message': message,
                        'conditions': conditions(previous_conditions, Ready=('False', reason, message))},
                       (EventSpec('Warning', reason, message),) if first else (),
                       parsed.poll_interval_s if retry and parsed is not None else None, target, message)

    parsed: AutoscalerSpec | None = None
    try:
        parsed = AutoscalerSpec.from_spec(spec)
    except ValueError as e:
        return failed('InvalidSpec', str(e), retry=False)  # retried when the spec changes

    # The target Deployment: its replicas (current) and selector (the live consumers).
    try:
        deployment = await api.get_deployment(namespace, parsed.target.name)
    except KubeNotFound:
        return failed('TargetNotFound',
                      f'Deployment {parsed.target.name} not found; retrying every {parsed.poll_interval_s:g}s')
    except KubeError as e:
        return failed('KubernetesError', f'cannot read Deployment {parsed.target.name}: {e}')
    current = int((deployment.get('spec') or {}).get('replicas', 1))

    # Redis URL from the Secret (or the development `url`).
    try:
        if parsed.redis.secret_name:
            raw_url = await api.read_secret_value(namespace, parsed.redis.secret_name, parsed.redis.secret_key)
        else:
            raw_url = str(parsed.redis.url)
        url = redis_url(raw_url, tls=parsed.redis.tls, username=parsed.redis.username)
    except (KubeError, KeyError, ValueError) as e:
        return failed('RedisSecretUnavailable',
                      f'cannot read the Redis URL from Secret {parsed.redis.secret_name} key {parsed.redis.secret_key}: {e}',
                      target=deployment, currentReplicas=current, desiredReplicas=current)

    # The live consumers: the Deployment's pods (consumer name = pod name).
    match_labels = ((deployment.get('spec') or {}).get('selector') or {}).get('matchLabels') or {}
    live: set[str] | None
    try:
        live = await api.list_pod_names(namespace, match_labels)
    except KubeError as e:
        logger.warning('%s: cannot list pods (%s); counting all pending entries as live', key, e)
        live = None

    reader_key = (url, parsed.streams, parsed.combine, parsed.lag_count_limit, parsed.abandoned_after_ms)
    if state.reader is None or state.reader_key != reader_key:
        state.reader = SignalReader(redis_for(url), parsed.streams, combine=parsed.combine,  # type: ignore[arg-type]
                                    lag_count_limit=parsed.lag_count_limit,
                                    abandoned_after_ms=parsed.abandoned_after_ms, partitions=partitions,
                                    cluster=cluster)
        state.reader_key = reader_key
    signals: Signals = await state.reader.read(live)

    decision = policy.decide(signals, current, parsed.rules, state.history, now)
    applied = False
    events: list[EventSpec] = []
    error: str | None = None
    retry_in: float | None = None
    reason, message = decision.reason, decision.message
    if parsed.paused:
        reason, message = 'Paused', f'paused: would want {decision.desired} replicas ({decision.message})'
        if status.get('reason') != 'Paused':
            events.append(EventSpec('Normal', 'Paused', f'scaling paused at {current} replicas'))
    elif parsed.dry_run:
        reason, message = 'DryRun', f'dry run: {decision.message}'
        if decision.changes and status.get('desiredReplicas') != decision.desired:
            events.append(EventSpec('Normal', 'DryRun',
                                    f'would scale {parsed.target.name} from {current} to {decision.desired}: {decision.message}'))
    elif decision.changes:
        try:
            await api.patch_scale(namespace, parsed.target.name, decision.desired)
            applied = True
        except KubeError as e:
            error = f'cannot scale Deployment {parsed.target.name}: {e}'
            retry_in = parsed.poll_interval_s
            events.append(EventSpec('Warning', 'ScaleFailed', error))
    if applied:
        text = f'scaled {parsed.target.name} from {current} to {decision.desired}: {decision.message}'
        events.append(EventSpec('Normal', 'Scaled', text))
        events.append(EventSpec('Normal', 'Scaled', f'{text} (StreamAutoscaler {name})', on_target=True))
        if metrics is not None:
            metrics.scalings.labels(key, 'up' if decision.desired > current else 'down').inc()
    state.history = state.history.recorded(decision, now, parsed.rules, applied)
    outcome = ('scaled' if applied else 'failed' if error else
               'dry_run' if parsed.dry_run and decision.changes and status.get('desiredReplicas') != decision.desired
               else None)
    if outcome is not None:
        record = decisions.Decision(autoscaler=key, target=parsed.target.name, current=current, desired=decision.desired,
                                    outcome=outcome, reason=decision.reason, message=decision.message,
                                    backlog=signals.backlog)
        try:
            await decisions.record(redis_for(url), sorted({stream for stream, _ in parsed.streams}), record)
        except (RedisError, OSError) as e:  # the decision stands; only its record for the console is missing
            logger.warning('%s: cannot record the decision in Redis: %s', key, e)

    if not signals.reachable and transition('RedisReachable', 'False'):
        events.append(EventSpec('Warning', 'RedisUnreachable', f'{signals.error}; holding {current} replicas'))
    # One Warning per incident: a stream that was read (or not shown) on the previous poll and
    # fails now. The previous poll's per-stream errors come from the status we wrote, so an
    # operator restart does not repeat the Event.
    failing_before = {(s.get('stream'), s.get('group'))
                      for s in ((status.get('signals') or {}).get('streams') or ()) if s.get('error')}
    for s in signals.unreadable:
        if (s.stream, s.group) not in failing_before:
            events.append(EventSpec('Warning', STREAM_UNREADABLE,
                                    f'cannot read stream {s.stream} (group {s.group}): {s.error}; it is retried every poll, '
                                    f'the other streams keep scaling (up only, until it reads again)'))
    missing, abandoned, ahead = group_conditions(signals, parsed.abandoned_after_ms)
    if abandoned[0] == 'True' and transition(GROUP_ABANDONED, 'True'):
        events.append(EventSpec('Warning', GROUP_ABANDONED, abandoned[2]))
    if ahead[0] == 'True' and transition(GROUP_AHEAD, 'True'):
        events.append(EventSpec('Warning', GROUP_AHEAD, ahead[2]))
    if metrics is not None:
        metrics.observe(key, signals, decision)
        metrics.polls.labels(key, 'hold' if decision.reason == 'Hold' else 'ok').inc()

    limits = [limit for limit in decision.limited_by if limit != policy.TOLERANCE]
    backlog_text = signals.backlog if signals.backlog is not None else f'at least {signals.backlog_floor}'
    active = ('Unknown', 'BacklogUnknown', 'the backlog is unknown') if decision.active is None else (
        ('True', 'BacklogAboveActivation', f'backlog {backlog_text} >= activation {parsed.rules.activation_backlog}')
        if decision.active else
        ('False', 'BacklogBelowActivation', f'backlog {backlog_text} < activation {parsed.rules.activation_backlog}'))
    if not signals.reachable:
        ready = ('False', 'RedisUnreachable', signals.error or 'Redis is unreachable')
    elif signals.unreadable:
        ready = ('False', STREAM_UNREADABLE, '; '.join(
            f'stream {s.stream} (group {s.group}): {s.error}' for s in signals.unreadable)
            + '; scaling up on the readable streams, never down, until every stream reads again')
    else:
        ready = ('True', 'Polling', 'reading Redis and scaling')
    lag_exact = ('Unknown', 'RedisUnreachable', 'no reading') if not signals.reachable else (
        ('True', 'Exact', 'lag read or counted exactly') if signals.lag_exact else
        ('False', 'Estimated', 'lag unknown or a capped count: ' + ', '.join(
            f'{s.stream}: {s.lag_source}' for s in signals.streams if not s.lag_exact)))
    new_status: dict[str, Any] = {
        **base,
        'currentReplicas': decision.desired if applied else current,
        'desiredReplicas': decision.desired,
        'recommendedReplicas': decision.recommended,
        'limitedBy': ','.join(decision.limited_by) or None,
        'reason': reason,
        'message': message,
        'signals': signals.to_status(),
        'conditions': conditions(
            previous_conditions,
            Ready=ready,
            Active=active,
            ScalingLimited=('True', limits[0], message) if limits else ('False', 'NotLimited', 'following the recommendation'),
            RedisReachable=('True', 'Reachable', 'the last poll read Redis') if signals.reachable else
                           ('False', 'Unreachable', signals.error or 'Redis is unreachable'),
            LagExact=lag_exact,
            GroupMissing=missing,
            GroupAbandoned=abandoned,
            GroupAhead=ahead,
        ),
    }
    if applied:
        new_status['lastScaleTime'] = _now_iso()
    return Outcome(new_status, tuple(events), retry_in, deployment, error)
