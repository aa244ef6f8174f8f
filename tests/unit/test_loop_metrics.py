"""``LoopHistogram`` and ``LoopCounter`` expose exactly what prometheus_client's Histogram and Counter would for the same values."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from streamcore.metrics import LoopHistogram, render


def _without_created(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if "_created" not in line)


def test_exposition_equals_prometheus_client_histogram():
    ours_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    ours = LoopHistogram("t_handle_seconds", "Handler duration in seconds.", ["component"], registry=ours_reg)
    ref = Histogram("t_handle_seconds", "Handler duration in seconds.", ["component"], registry=ref_reg)
    values = [0.0, 0.001, 0.005, 0.0050001, 0.25, 0.3, 7.5, 10.0, 10.5, 1e6]
    for component, vals in (("consumer", values), ("reclaimer", values[:3])):
        for v in vals:
            ours.labels(component).observe(v)
            ref.labels(component).observe(v)
    assert render(ours_reg).decode() == _without_created(render(ref_reg).decode())
    assert 'component="consumer",le="+Inf"} 10.0' in render(ours_reg).decode()


def test_labels_must_match_the_label_names():
    hist = LoopHistogram("t2_seconds", "x", ["component"])
    with pytest.raises(ValueError, match="takes labels"):
        hist.labels("a", "b")


def test_loop_counter_exposition_equals_prometheus_client_counter():
    from prometheus_client import Counter

    from streamcore.metrics import LoopCounter

    ours_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    ours = LoopCounter("t_orders_processed_total", "Orders handled successfully.", ["component"], registry=ours_reg)
    ref = Counter("t_orders_processed_total", "Orders handled successfully.", ["component"], registry=ref_reg)
    for component, n in (("consumer", 3), ("reclaimer", 1)):
        for _ in range(n):
            ours.labels(component).inc()
            ref.labels(component).inc()
    ours.labels("consumer").inc(5)
    ref.labels("consumer").inc(5)
    assert render(ours_reg).decode() == _without_created(render(ref_reg).decode())
    with pytest.raises(ValueError):
        ours.labels("consumer").inc(-1)
