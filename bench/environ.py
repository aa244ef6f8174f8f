"""The environment the bench gives the processes it measures."""

from __future__ import annotations

import os


def clean_environ() -> dict[str, str]:
    """This process's environment without any setting of our components (:func:`setting_names`).

    A REDIS_SENTINELS, REDIS_CLUSTER or STREAM_PARTITIONS left in the shell that runs the bench
    would send the measured processes' orders to another server, or measure another layout; each
    caller then sets what its process needs (``REDIS_URL`` of the bench's own Redis, names).
    """
    names = setting_names()
    return {k: v for k, v in os.environ.items() if k.upper() not in names}


def setting_names() -> frozenset[str]:
    """Environment variables our components read, upper case (they are read case-insensitively):
    every field of the four settings classes, and anything starting with ``REDIS_``."""
    from autoscaler.settings import AutoscalerSettings
    from consumer.settings import ConsumerSettings
    from producer.settings import ProducerSettings
    from reclaimer.settings import ReclaimerSettings

    classes = (AutoscalerSettings, ConsumerSettings, ProducerSettings, ReclaimerSettings)
    names = {name.upper() for cls in classes for name in cls.model_fields}
    return frozenset(names | {k.upper() for k in os.environ if k.upper().startswith("REDIS_")})
