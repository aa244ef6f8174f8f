"""The scaling policy: a pure function from observations to a desired replica count.

Nothing here does I/O or reads a clock. :func:`decide` takes what was observed (the backlog, or
the fact that it is unknown), the current replica count, the rules (:class:`PolicySpec`), the
recent history and ``now``, and returns a :class:`Decision` that says how many replicas we want
and why. The caller (the kopf timer or the local actuator) applies it and records it with
:meth:`History.recorded`, which returns a new history.

The steps follow the Kubernetes HPA (``behavior``) where that is sound, and differ where streams
need it:

1. **Hold when blind.** Redis unreachable or backlog unknown (``None``, e.g. a NULL lag that could
   not be counted) -> keep the current replicas (raised to ``minReplicas`` at most). Never scale
   in on an unknown value; a NULL lag is not 0. When only part of the backlog is unknown (one of
   several streams unreadable), the observation's ``backlog_floor`` (what is known) still
   drives scaling *up* through the steps below; scaling down waits until everything is read.
2. **Raw recommendation.** ``ceil(backlog / targetBacklogPerReplica)``; no change while the ratio
   ``backlog / (target * current)`` is within ``tolerance`` of 1. At 0 replicas, a backlog of at
   least ``activationBacklog`` (inclusive) wakes the workload: at least 1 replica, on the first
   poll that sees it (no up-stabilization for the 0 -> 1 step). Then clamped to min/max.
3. **Stabilization.** Scale up only to the lowest recommendation of the scale-up window, scale
   down only to the highest recommendation in force during the scale-down window. A
   recommendation stays in force until the next poll, so the last one made before the window
   began counts as well: polls that come late (a starved or stalled loop) never let a single
   new sample scale down. Scale-down also needs a full window of observations: after a
   (re)start nothing is removed until the operator has watched for a whole window, so a
   restart cannot cut replicas on one sample.
4. **Rate policies.** At most N pods / P percent per period (``selectPolicy`` Max, Min or
   Disabled), counted from the changes recorded in the history.

Units: times are seconds (``float``, any monotonic or wall clock, as long as ``now`` and the
history use the same one); backlogs are numbers of stream entries; replicas are pod counts.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal, Protocol

SelectPolicy = Literal['Max', 'Min', 'Disabled']

# Reasons a decision can give for not following the raw recommendation (status.limitedBy).
MIN_REPLICAS = 'MinReplicas'
MAX_REPLICAS = 'MaxReplicas'
TOLERANCE = 'Tolerance'
SCALE_UP_STABILIZATION = 'ScaleUpStabilization'
SCALE_DOWN_STABILIZATION = 'ScaleDownStabilization'
SCALE_UP_RATE = 'ScaleUpRate'
SCALE_DOWN_RATE = 'ScaleDownRate'
REDIS_UNREACHABLE = 'RedisUnreachable'
BACKLOG_UNKNOWN = 'BacklogUnknown'


class BacklogObservation(Protocol):
    """What the policy needs from a reading of Redis (``signals.Signals`` provides it).

    ``backlog``: undelivered entries (lag) + entries pending on live consumers, summed or maxed
    over the streams; ``None`` when unknown. ``reachable``: whether Redis answered at all.
    ``backlog_floor``: a lower bound of the backlog from the parts that could be read (equal to
    ``backlog`` when that is known; ``None`` when nothing is known).
    """

    @property
    def backlog(self) -> int | None: ...

    @property
    def reachable(self) -> bool: ...

    @property
    def backlog_floor(self) -> int | None: ...


@dataclasses.dataclass(frozen=True)
class Observation:
    """A minimal :class:`BacklogObservation` (tests, local runner). ``backlog`` and
    ``backlog_floor`` in entries."""

    backlog: int | None
    reachable: bool = True
    backlog_floor: int | None = None


@dataclasses.dataclass(frozen=True)
class RatePolicy:
    """At most ``value`` pods (``Pods``) or percent (``Percent``) per ``period_seconds``."""

    type: Literal['Pods', 'Percent']
    value: int
    period_seconds: float


@dataclasses.dataclass(frozen=True)
class ScalingRules:
    """One direction of ``spec.behavior`` (``scaleUp`` or ``scaleDown``).

    ``policies`` empty means no rate limit. ``select_policy``: ``Max`` picks the policy allowing
    the biggest change, ``Min`` the smallest, ``Disabled`` forbids scaling in this direction.
    """

    stabilization_window_seconds: float = 0.0
    select_policy: SelectPolicy = 'Max'
    policies: tuple[RatePolicy, ...] = ()

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any] | None, default_window: float) -> ScalingRules:
        """Build from ``spec.behavior.scaleUp``/``scaleDown`` (camelCase, CRD defaults applied).

        Raises ``ValueError`` on values the CRD schema would reject.
        """
        raw = raw or {}
        window = float(raw.get('stabilizationWindowSeconds', default_window))
        select = raw.get('selectPolicy', 'Max')
        if window < 0:
            raise ValueError(f"stabilizationWindowSeconds must be >= 0, got {window}")
        if select not in ('Max', 'Min', 'Disabled'):
            raise ValueError(f"selectPolicy must be Max, Min or Disabled, got {select!r}")
        policies = []
        for item in raw.get('policies') or ():
            kind, value, period = item.get('type'), int(item.get('value', 0)), float(item.get('periodSeconds', 0))
            if kind not in ('Pods', 'Percent') or value < 1 or period <= 0:
                raise ValueError(f"invalid rate policy {dict(item)!r}")
            policies.append(RatePolicy(kind, value, period))
        return cls(window, select, tuple(policies))


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """The scaling rules of one StreamAutoscaler (the policy-relevant part of its ``spec``).

    Defaults are the CRD's: ``minReplicas`` 1, ``targetBacklogPerReplica`` 100 entries,
    ``activationBacklog`` 1 entry (inclusive), ``tolerance`` 0.1, scale-up window 0 s,
    scale-down window 300 s, no rate policies.
    """

    min_replicas: int = 1
    max_replicas: int = 10
    target_backlog_per_replica: int = 100
    activation_backlog: int = 1
    tolerance: float = 0.1
    scale_up: ScalingRules = ScalingRules(0.0)
    scale_down: ScalingRules = ScalingRules(300.0)

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"minReplicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"maxReplicas ({self.max_replicas}) must be >= 1 and >= minReplicas ({self.min_replicas})")
        if self.target_backlog_per_replica < 1:
            raise ValueError(f"targetBacklogPerReplica must be >= 1, got {self.target_backlog_per_replica}")
        if self.activation_backlog < 1:
            raise ValueError(f"activationBacklog must be >= 1, got {self.activation_backlog}")
        if not 0 <= self.tolerance <= 1:
            raise ValueError(f"tolerance must be within [0, 1], got {self.tolerance}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PolicySpec:
        """Build from a StreamAutoscaler ``spec`` dict, applying the CRD's defaults.

        The defaults are applied here too because not every API server (or emulator) defaults
        custom resources. Raises ``ValueError`` for values the CRD schema would reject.
        """
        behavior = spec.get('behavior') or {}
        try:
            return cls(
                min_replicas=int(spec.get('minReplicas', 1)),
                max_replicas=int(spec['maxReplicas']),
                target_backlog_per_replica=int(spec.get('targetBacklogPerReplica', 100)),
                activation_backlog=int(spec.get('activationBacklog', 1)),
                tolerance=float(spec.get('tolerance', 0.1)),
                scale_up=ScalingRules.from_spec(behavior.get('scaleUp'), 0.0),
                scale_down=ScalingRules.from_spec(behavior.get('scaleDown'), 300.0),
            )
        except KeyError as e:
            raise ValueError(f"spec.{e.args[0]} is required") from None
        except (TypeError, AttributeError) as e:
            raise ValueError(f"malformed spec: {e}") from None


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The bounded raw recommendation (replicas) computed at time ``at`` (s)."""

    at: float
    replicas: int


@dataclasses.dataclass(frozen=True)
class ScaleChange:
    """A replica change that was applied at time ``at`` (s): ``before`` -> ``after`` pods."""

    at: float
    before: int
    after: int


@dataclasses.dataclass(frozen=True)
class History:
    """What the policy remembers between polls (immutable; see :meth:`recorded`).

    ``recommendations``: one per poll, oldest first; the oldest kept may lie before the longest
    window: it was still in force when the window began, and it proves how long we have been
    watching. ``changes``: applied scale changes
    within the longest rate-policy period.
    """

    recommendations: tuple[Recommendation, ...] = ()
    changes: tuple[ScaleChange, ...] = ()

    def recorded(self, decision: Decision, now: float, spec: PolicySpec, applied: bool) -> History:
        """Return a new history with this decision's recommendation (and change, if ``applied``).

        A hold (``recommended is None``) is recorded as the held replica count, so after an
        outage a scale-down waits for a full window of real observations.
        """
        value = decision.recommended if decision.recommended is not None else decision.desired
        recommendations = self.recommendations + (Recommendation(now, value),)
        changes = self.changes
        if applied and decision.desired != decision.current:
            changes = changes + (ScaleChange(now, decision.current, decision.desired),)

        window = max(spec.scale_up.stabilization_window_seconds, spec.scale_down.stabilization_window_seconds)
        cutoff = now - window
        inside = [r for r in recommendations if r.at > cutoff]
        older = [r for r in recommendations if r.at <= cutoff]
        kept = tuple(older[-1:] + inside)  # the newest one outside the window proves coverage

        periods = [p.period_seconds for p in spec.scale_up.policies + spec.scale_down.policies]
        horizon = now - max(periods, default=0.0)
        return History(kept, tuple(c for c in changes if c.at > horizon))


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of one policy evaluation.

    ``desired``: replicas to have now. ``current``: replicas the workload had (scale
    ``spec.replicas``). ``recommended``: the raw recommendation clamped to min/max, before
    stabilization and rate limits; ``None`` when holding blind or when only a lower bound of the
    backlog is known (then ``limited_by`` holds ``BacklogUnknown`` and ``desired`` >= ``current``).
    ``reason``: one of ``Hold``, ``Steady``, ``ScaleUp``, ``ScaleDown``. ``message``: a sentence
    for status and Events. ``limited_by``: constants of this module naming what kept ``desired``
    from the raw recommendation. ``active``: backlog >= ``activationBacklog`` (``None`` when
    unknown).
    """

    desired: int
    current: int
    recommended: int | None
    reason: str
    message: str
    limited_by: tuple[str, ...] = ()
    active: bool | None = None

    @property
    def changes(self) -> bool:
        """Whether the desired replica count differs from the current one."""
        return self.desired != self.current


def decide(
    observation: BacklogObservation,
    current: int,
    spec: PolicySpec,
    history: History,
    now: float,
) -> Decision:
    """Compute the desired replica count. Pure; see the module docstring for the steps.

    ``observation``: backlog (entries or ``None``) and reachability; ``current``: replicas now
    (pods, >= 0); ``spec``: the rules; ``history``: recent recommendations and changes;
    ``now``: seconds on the same clock as ``history``.
    """
    current = max(0, current)
    known = observation.backlog
    partial = False
    if known is None and observation.reachable and observation.backlog_floor is not None:
        known, partial = observation.backlog_floor, True  # part unknown: up on what is known, never down
    if not observation.reachable or known is None:
        cause = REDIS_UNREACHABLE if not observation.reachable else BACKLOG_UNKNOWN
        desired = max(current, spec.min_replicas)
        limited = (cause,) + ((MIN_REPLICAS,) if desired != current else ())
        what = 'Redis is unreachable' if cause == REDIS_UNREACHABLE else 'the backlog is unknown'
        return Decision(desired, current, None, 'Hold',
                        f"holding {desired} replicas: {what}; never scaling in blind", limited, None)

    backlog = max(0, known)
    target = spec.target_backlog_per_replica
    active = backlog >= spec.activation_backlog
    limited: list[str] = []

    # 2. Raw recommendation.
    if current == 0:
        raw = max(1, math.ceil(backlog / target)) if active else 0
    else:
        raw = math.ceil(backlog / target)
        if backlog > 0 and abs(backlog / (target * current) - 1) <= spec.tolerance and raw != current:
            raw = current
            limited.append(TOLERANCE)
    bounded = min(max(raw, spec.min_replicas), spec.max_replicas)
    if bounded > raw:
        limited.append(MIN_REPLICAS)
    elif bounded < raw:
        limited.append(MAX_REPLICAS)

    # 3. Stabilization: the up window's minimum and the down window's maximum bound the move.
    up_window = spec.scale_up.stabilization_window_seconds
    down_window = spec.scale_down.stabilization_window_seconds
    ups = [r.replicas for r in history.recommendations if r.at > now - up_window] + [bounded]
    downs = [bounded]
    if down_window > 0:
        # A recommendation stands until the next poll replaces it, so the one made last before
        # the window began was still in force at its start and counts too. Without it, a poll
        # that comes later than the window (a stalled or starved loop) would scale down on its
        # single sample: the window would hold nothing else.
        cutoff = now - down_window
        before = [r for r in history.recommendations if r.at <= cutoff][-1:]
        downs += [r.replicas for r in before] + [r.replicas for r in history.recommendations if r.at > cutoff]
        if not before:  # not watched for a whole window yet (just started): never scale down
            downs.append(current)
    desired = current
    if desired < min(ups):
        desired = min(ups)
    if desired > max(downs):
        desired = max(downs)
    if current == 0 and bounded >= 1 and desired < 1:
        desired = 1  # wake on the first poll that sees the activation backlog
    if bounded > current and desired < bounded:
        limited.append(SCALE_UP_STABILIZATION)
    elif bounded < current and desired > bounded:
        limited.append(SCALE_DOWN_STABILIZATION)

    # 4. Rate policies.
    if desired > current:
        ceiling = _scale_up_limit(current, spec.scale_up, history.changes, now)
        if desired > ceiling:
            desired = ceiling
            limited.append(SCALE_UP_RATE)
    elif desired < current:
        floor = _scale_down_limit(current, spec.scale_down, history.changes, now)
        if desired < floor:
            desired = floor
            limited.append(SCALE_DOWN_RATE)

    # Bounds win last, as in the HPA (a workload outside min/max is brought back at once).
    desired = min(max(desired, spec.min_replicas), spec.max_replicas)

    if partial:
        # Only a lower bound is known: never scale in on it (not even above maxReplicas, as in
        # a hold); it is no recommendation either, so the history records what we keep.
        desired = max(desired, current, spec.min_replicas)
        limited.append(BACKLOG_UNKNOWN)
        reason = 'ScaleUp' if desired > current else 'Hold'
        message = (f"backlog at least {backlog} (part of it unknown) / target {target} per replica -> "
                   f"{raw} replicas; {current} -> {desired} (limited by {', '.join(limited)}; never scaling in "
                   f"while part of the backlog is unknown)")
        return Decision(desired, current, None, reason, message, tuple(limited), True if active else None)

    reason = 'ScaleUp' if desired > current else 'ScaleDown' if desired < current else 'Steady'
    message = f"backlog {backlog} / target {target} per replica -> {raw} replicas"
    if bounded != raw:
        message += f", bounded to {bounded}"
    message += f"; {current} -> {desired}"
    if limited:
        message += f" (limited by {', '.join(limited)})"
    return Decision(desired, current, bounded, reason, message, tuple(limited), active)


def _scale_up_limit(current: int, rules: ScalingRules, changes: tuple[ScaleChange, ...], now: float) -> int:
    """Highest replica count the scale-up rate policies allow now (at least 1: waking is never rate-limited)."""
    if rules.select_policy == 'Disabled':
        return current  # disabled means disabled, waking from zero included
    if not rules.policies:
        return 2**31
    limits = []
    for policy in rules.policies:
        added = sum(c.after - c.before for c in changes if c.at > now - policy.period_seconds and c.after > c.before)
        start = max(0, current - added)
        if policy.type == 'Pods':
            limits.append(start + policy.value)
        else:
            limits.append(math.ceil(start * (1 + policy.value / 100)))
    limit = max(limits) if rules.select_policy == 'Max' else min(limits)
    return max(limit, 1)


def _scale_down_limit(current: int, rules: ScalingRules, changes: tuple[ScaleChange, ...], now: float) -> int:
    """Lowest replica count the scale-down rate policies allow now."""
    if rules.select_policy == 'Disabled':
        return current
    if not rules.policies:
        return 0
    limits = []
    for policy in rules.policies:
        removed = sum(c.before - c.after for c in changes if c.at > now - policy.period_seconds and c.after < c.before)
        start = current + removed
        if policy.type == 'Pods':
            limits.append(start - policy.value)
        else:
            limits.append(math.floor(start * (1 - policy.value / 100)))
    limit = min(limits) if rules.select_policy == 'Max' else max(limits)
    return max(limit, 0)
