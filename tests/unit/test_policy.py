"""Table-driven tests of the pure scaling policy (autoscaler.policy)."""
from __future__ import annotations

import dataclasses

import pytest

from autoscaler import policy as p
from autoscaler.policy import History, Observation, PolicySpec, Recommendation, ScaleChange, ScalingRules, decide

NOW = 10_000.0
NO_WINDOWS = PolicySpec(min_replicas=0, max_replicas=10, target_backlog_per_replica=100,
                        scale_up=ScalingRules(0), scale_down=ScalingRules(0))


def spec(**kw) -> PolicySpec:
    return dataclasses.replace(NO_WINDOWS, **kw)


@pytest.mark.parametrize(
    ('backlog', 'current', 'rules', 'desired', 'limited_by'),
    [
        # ceil(backlog / target)
        (250, 1, spec(), 3, ()),
        (1000, 2, spec(), 10, ()),
        (1, 5, spec(), 1, ()),
        # bounds
        (5000, 2, spec(), 10, (p.MAX_REPLICAS,)),
        (0, 3, spec(min_replicas=2), 2, (p.MIN_REPLICAS,)),
        (0, 0, spec(min_replicas=1), 1, (p.MIN_REPLICAS,)),
        (0, 12, spec(), 0, ()),  # above max and idle: back within bounds
        # 10 % tolerance around the current ratio: no change...
        (410, 4, spec(), 4, (p.TOLERANCE,)),
        (430, 4, spec(), 4, (p.TOLERANCE,)),
        (370, 4, spec(), 4, ()),  # ceil(3.7) = 4: no change anyway
        # ...but outside it, follow the recommendation
        (450, 4, spec(), 5, ()),
        (350, 4, spec(), 4, ()),  # ceil(3.5) = 4 anyway
        (290, 4, spec(), 3, ()),
        # activation from zero: inclusive threshold, one entry wakes by default
        (1, 0, spec(), 1, ()),
        (0, 0, spec(), 0, ()),
        (4, 0, spec(activation_backlog=5), 0, ()),
        (5, 0, spec(activation_backlog=5), 1, ()),
        (730, 0, spec(), 8, ()),
        # below activation but replicas running: keep one until the backlog is really 0
        (3, 2, spec(activation_backlog=5), 1, ()),
        # scale to zero only on a zero backlog
        (0, 1, spec(), 0, ()),
    ],
)
def test_recommendation_table(backlog, current, rules, desired, limited_by):
    decision = decide(Observation(backlog), current, rules, History(), NOW)
    assert decision.desired == desired
    assert decision.limited_by == limited_by
    assert decision.reason == ('ScaleUp' if desired > current else 'ScaleDown' if desired < current else 'Steady')


@pytest.mark.parametrize(
    ('observation', 'current', 'rules', 'desired', 'limited_by'),
    [
        (Observation(None), 5, spec(), 5, (p.BACKLOG_UNKNOWN,)),
        (Observation(None), 0, spec(), 0, (p.BACKLOG_UNKNOWN,)),
        (Observation(0, reachable=False), 5, spec(), 5, (p.REDIS_UNREACHABLE,)),
        (Observation(None, reachable=False), 7, spec(), 7, (p.REDIS_UNREACHABLE,)),
        # blind, but below the minimum: scaling *out* to the minimum is safe
        (Observation(None), 0, spec(min_replicas=2), 2, (p.BACKLOG_UNKNOWN, p.MIN_REPLICAS)),
        # blind and above the maximum: still never scale in blind
        (Observation(None), 12, spec(), 12, (p.BACKLOG_UNKNOWN,)),
    ],
)
def test_hold_when_blind(observation, current, rules, desired, limited_by):
    decision = decide(observation, current, rules, History(), NOW)
    assert (decision.desired, decision.reason, decision.limited_by) == (desired, 'Hold', limited_by)
    assert decision.recommended is None
    assert decision.active is None


def test_null_lag_is_not_zero():
    """C18: an unknown backlog (None) must never be read as 0 -> never scales in or to zero."""
    rules = spec(min_replicas=0)
    assert decide(Observation(None), 3, rules, History(), NOW).desired == 3
    assert decide(Observation(0), 3, rules, History(), NOW).desired == 0


def history_of(*recs: tuple[float, int], changes: tuple[ScaleChange, ...] = ()) -> History:
    return History(tuple(Recommendation(NOW - ago, n) for ago, n in recs), changes)


@pytest.mark.parametrize(
    ('backlog', 'current', 'history', 'down_window', 'desired', 'limited_by'),
    [
        # high recommendation 100 s ago, inside a 300 s window: stay at 5
        (100, 5, history_of((400, 5), (100, 5), (50, 2)), 300, 5, (p.SCALE_DOWN_STABILIZATION,)),
        # the highest in the window is 3 -> go down to 3, not to 1
        (100, 5, history_of((400, 2), (200, 3), (50, 2)), 300, 3, (p.SCALE_DOWN_STABILIZATION,)),
        # the 5 made 400 s ago stood until the poll 200 s ago, i.e. during the window's first 100 s
        (100, 5, history_of((400, 5), (200, 3), (50, 2)), 300, 5, (p.SCALE_DOWN_STABILIZATION,)),
        # all recommendations in force during the window low: scale down
        (100, 5, history_of((400, 5), (301, 1), (200, 1), (50, 1)), 300, 1, ()),
        # just (re)started: not yet watched a full window -> keep
        (0, 5, history_of((100, 0), (50, 0)), 300, 5, (p.SCALE_DOWN_STABILIZATION,)),
        (0, 5, History(), 300, 5, (p.SCALE_DOWN_STABILIZATION,)),
        # to zero after a full window of zeros
        (0, 2, history_of((301, 0), (200, 0), (1, 0)), 300, 0, ()),
        # not if the window saw live pending (recommendation 1) 10 s ago
        (0, 2, history_of((301, 0), (10, 1)), 300, 1, (p.SCALE_DOWN_STABILIZATION,)),
    ],
)
def test_scale_down_stabilization(backlog, current, history, down_window, desired, limited_by):
    rules = spec(scale_down=ScalingRules(down_window))
    decision = decide(Observation(backlog), current, rules, history, NOW)
    assert (decision.desired, decision.limited_by) == (desired, limited_by)


@pytest.mark.parametrize(
    ('backlog', 'current', 'history', 'desired', 'limited_by'),
    [
        # 60 s up window: the lowest recommendation of the window wins
        (800, 2, history_of((30, 4), (10, 6)), 4, (p.SCALE_UP_STABILIZATION,)),
        (800, 2, history_of((30, 2), (10, 6)), 2, (p.SCALE_UP_STABILIZATION,)),
        (800, 2, history_of((90, 2), (30, 9)), 8, ()),
        # waking from zero ignores the up window (C20): at least 1 at once
        (300, 0, history_of((30, 0), (10, 0)), 1, (p.SCALE_UP_STABILIZATION,)),
        (1, 0, history_of((30, 0)), 1, ()),
    ],
)
def test_scale_up_stabilization(backlog, current, history, desired, limited_by):
    rules = spec(scale_up=ScalingRules(60))
    decision = decide(Observation(backlog), current, rules, history, NOW)
    assert (decision.desired, decision.limited_by) == (desired, limited_by)


UP_4_PODS = ScalingRules(0, 'Max', (p.RatePolicy('Pods', 4, 60),))
UP_100_PERCENT = ScalingRules(0, 'Max', (p.RatePolicy('Percent', 100, 60),))
UP_BOTH_MAX = ScalingRules(0, 'Max', (p.RatePolicy('Pods', 4, 60), p.RatePolicy('Percent', 100, 60)))
UP_BOTH_MIN = ScalingRules(0, 'Min', (p.RatePolicy('Pods', 4, 60), p.RatePolicy('Percent', 100, 60)))
UP_DISABLED = ScalingRules(0, 'Disabled', (p.RatePolicy('Pods', 4, 60),))
DOWN_1_POD = ScalingRules(0, 'Max', (p.RatePolicy('Pods', 1, 60),))
DOWN_50_PERCENT = ScalingRules(0, 'Max', (p.RatePolicy('Percent', 50, 60),))


@pytest.mark.parametrize(
    ('backlog', 'current', 'up', 'down', 'changes', 'desired', 'limited'),
    [
        (5000, 1, UP_4_PODS, ScalingRules(0), (), 5, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        (5000, 3, UP_100_PERCENT, ScalingRules(0), (), 6, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        (5000, 6, UP_BOTH_MAX, ScalingRules(0), (), 10, (p.MAX_REPLICAS,)),
        (5000, 2, UP_BOTH_MAX, ScalingRules(0), (), 6, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        (5000, 2, UP_BOTH_MIN, ScalingRules(0), (), 4, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        (5000, 2, UP_DISABLED, ScalingRules(0), (), 2, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        # 3 pods already added 30 s ago count against the 4-pod budget of the 60 s period
        (5000, 4, UP_4_PODS, ScalingRules(0), (ScaleChange(NOW - 30, 1, 4),), 5, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        # ...but not once the period is over
        (5000, 4, UP_4_PODS, ScalingRules(0), (ScaleChange(NOW - 61, 1, 4),), 8, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        # percent of zero is zero, yet waking from 0 is always allowed
        (5000, 0, UP_100_PERCENT, ScalingRules(0), (), 1, (p.MAX_REPLICAS, p.SCALE_UP_RATE)),
        (0, 8, ScalingRules(0), DOWN_1_POD, (), 7, (p.SCALE_DOWN_RATE,)),
        (0, 8, ScalingRules(0), DOWN_50_PERCENT, (), 4, (p.SCALE_DOWN_RATE,)),
        (0, 7, ScalingRules(0), DOWN_1_POD, (ScaleChange(NOW - 10, 8, 7),), 7, (p.SCALE_DOWN_RATE,)),
    ],
)
def test_rate_policies(backlog, current, up, down, changes, desired, limited):
    rules = spec(scale_up=up, scale_down=down)
    decision = decide(Observation(backlog), current, rules, History((), changes), NOW)
    assert (decision.desired, decision.limited_by) == (desired, limited)


def run(backlogs, rules, current=1, step=15.0):
    """Drive the policy over a series of backlogs, applying every decision; return replicas."""
    history, now, seen = History(), 0.0, []
    for backlog in backlogs:
        decision = decide(Observation(backlog), current, rules, history, now)
        history = history.recorded(decision, now, rules, applied=True)
        current = decision.desired
        seen.append(current)
        now += step
    return seen


def test_no_flapping_on_oscillating_input():
    rules = PolicySpec(min_replicas=1, max_replicas=20, target_backlog_per_replica=100)  # 300 s down window
    replicas = run([500, 150] * 40, rules)
    assert replicas[0] == 5
    assert set(replicas) == {5}  # the down window's maximum absorbs the dips


def test_scale_down_after_window_then_to_zero():
    rules = PolicySpec(min_replicas=0, max_replicas=20, target_backlog_per_replica=100,
                       scale_down=ScalingRules(60))
    replicas = run([2000] * 2 + [0] * 10, rules, current=1, step=15)
    # up at once; down only when the recommendation in force during the whole 60 s window
    # (t=30..90: the 0 of t=30 stands from t=30 on) is 0
    assert replicas == [20, 20, 20, 20, 20, 20, 0, 0, 0, 0, 0, 0]


def test_one_bad_sample_does_not_scale_in():
    """C17: a NULL (None) sample in a steady stream holds; it neither scales in nor to max."""
    rules = PolicySpec(min_replicas=0, max_replicas=20, target_backlog_per_replica=100, scale_down=ScalingRules(30))
    assert run([400, 400, None, 400, 400], rules, current=4) == [4, 4, 4, 4, 4]


def test_outage_restarts_the_scale_down_window():
    rules = PolicySpec(min_replicas=0, max_replicas=10, target_backlog_per_replica=100, scale_down=ScalingRules(30))
    # a hold counts as a recommendation of the held count: after Redis returns with 0 the
    # replicas stay until a whole window has seen 0
    assert run([300] * 3 + [None] * 2 + [0] * 5, rules, current=3, step=10) == [3, 3, 3, 3, 3, 3, 3, 3, 0, 0]


def run_at(samples, rules, current):
    """Like :func:`run`, with explicit ``(time, backlog)`` samples (uneven polls)."""
    history, seen = History(), []
    for now, backlog in samples:
        decision = decide(Observation(backlog), current, rules, history, now)
        history = history.recorded(decision, now, rules, applied=True)
        current = decision.desired
        seen.append(current)
    return seen


def test_a_late_poll_does_not_scale_down_on_one_sample():
    """Issue 9 item 10: a poll loop starved for longer than the down window (2 s here, polls
    every 0.3 s) must not scale down on the first sample after the gap: the window then holds
    no other sample, yet the last recommendation (4) stood until that very poll. The low
    value must stand for a whole window first."""
    rules = PolicySpec(min_replicas=1, max_replicas=4, target_backlog_per_replica=200,
                       scale_down=ScalingRules(2.0))
    busy = [(t * 0.3, 2000) for t in range(10)]                    # t = 0 .. 2.7: 4 wanted
    after_gap = [(6.0 + t * 0.3, 150) for t in range(9)]           # 3.3 s later: 1 wanted
    replicas = run_at(busy + after_gap, rules, current=1)
    assert replicas[:10] == [4] * 10
    # 6.0 is the first low sample; it must have stood for 2 s (until t >= 8.0) before scaling in
    assert replicas[10:] == [4, 4, 4, 4, 4, 4, 4, 1, 1], replicas[10:]


def test_wake_from_zero_within_two_cycles():
    """C20: one order wakes a scaled-to-zero workload on the first poll that sees it."""
    rules = PolicySpec(min_replicas=0, max_replicas=5, scale_up=ScalingRules(120))
    assert run([0, 0, 1, 1], rules, current=0)[:3] == [0, 0, 1]


def test_history_is_pruned_but_keeps_coverage():
    rules = PolicySpec(scale_up=ScalingRules(0), scale_down=ScalingRules(100))
    history = History()
    for t in range(0, 1000, 10):
        decision = decide(Observation(100), 1, rules, history, float(t))
        history = history.recorded(decision, float(t), rules, applied=True)
    ats = [r.at for r in history.recommendations]
    assert ats[0] <= 990 - 100 < ats[1]
    assert len(ats) == 11


@pytest.mark.parametrize(
    ('raw', 'expected'),
    [
        ({'maxReplicas': 5}, PolicySpec(min_replicas=1, max_replicas=5)),
        ({'maxReplicas': 5, 'minReplicas': 0, 'targetBacklogPerReplica': 50, 'activationBacklog': 3,
          'behavior': {'scaleUp': {'stabilizationWindowSeconds': 10,
                                   'policies': [{'type': 'Pods', 'value': 2, 'periodSeconds': 15}]},
                       'scaleDown': {'selectPolicy': 'Disabled'}}},
         PolicySpec(0, 5, 50, 3, 0.1, ScalingRules(10, 'Max', (p.RatePolicy('Pods', 2, 15),)),
                    ScalingRules(300, 'Disabled'))),
    ],
)
def test_spec_from_custom_resource(raw, expected):
    assert PolicySpec.from_spec(raw) == expected


@pytest.mark.parametrize('raw', [
    {},
    {'maxReplicas': 0},
    {'maxReplicas': 2, 'minReplicas': 3},
    {'maxReplicas': 2, 'targetBacklogPerReplica': 0},
    {'maxReplicas': 2, 'activationBacklog': 0},
    {'maxReplicas': 2, 'behavior': {'scaleUp': {'policies': [{'type': 'Pods', 'value': 0, 'periodSeconds': 1}]}}},
    {'maxReplicas': 2, 'behavior': {'scaleDown': {'selectPolicy': 'Sometimes'}}},
])
def test_spec_rejects_invalid(raw):
    with pytest.raises(ValueError):
        PolicySpec.from_spec(raw)


@pytest.mark.parametrize(
    ('floor', 'current', 'rules', 'desired', 'reason', 'limited_by'),
    [
        # issue 9 item 6: one stream unreadable, the readable ones need 5 -> scale up on them
        (450, 1, spec(), 5, 'ScaleUp', (p.BACKLOG_UNKNOWN,)),
        (450, 0, spec(), 5, 'ScaleUp', (p.BACKLOG_UNKNOWN,)),
        (5000, 2, spec(), 10, 'ScaleUp', (p.MAX_REPLICAS, p.BACKLOG_UNKNOWN)),
        # ...but never down on a lower bound, not even to the minimum or from above the maximum
        (0, 4, spec(), 4, 'Hold', (p.BACKLOG_UNKNOWN,)),
        (100, 4, spec(min_replicas=1), 4, 'Hold', (p.BACKLOG_UNKNOWN,)),
        (0, 12, spec(), 12, 'Hold', (p.BACKLOG_UNKNOWN,)),
        (0, 0, spec(min_replicas=2), 2, 'ScaleUp', (p.MIN_REPLICAS, p.BACKLOG_UNKNOWN)),
    ],
)
def test_a_partly_unknown_backlog_scales_up_on_what_is_known_never_down(floor, current, rules, desired, reason, limited_by):
    decision = decide(Observation(None, backlog_floor=floor), current, rules, History(), NOW)
    assert (decision.desired, decision.reason, decision.limited_by) == (desired, reason, limited_by)
    assert decision.recommended is None  # a lower bound is no recommendation: the history keeps `desired`


def test_partly_unknown_then_read_again_waits_a_whole_window_before_scaling_in():
    rules = PolicySpec(min_replicas=0, max_replicas=10, target_backlog_per_replica=100, scale_down=ScalingRules(30))
    history, current, seen = History(), 1, []
    for now, observation in [(0, Observation(None, backlog_floor=500)), (10, Observation(None, backlog_floor=0)),
                             (20, Observation(0)), (30, Observation(0)), (40, Observation(0)), (50, Observation(0))]:
        decision = decide(observation, current, rules, history, float(now))
        history = history.recorded(decision, float(now), rules, applied=True)
        current = decision.desired
        seen.append(current)
    assert seen == [5, 5, 5, 5, 5, 0]  # the 5 kept at t=10 stands until t=20; 0 from t=20 + 30 s
