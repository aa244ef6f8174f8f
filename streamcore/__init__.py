"""Shared kernel of orderstream: settings, Redis access, stream operations, envelope, metrics.

Components (``producer``, ``consumer``, ``reclaimer``, ``autoscaler``) import from here;
this package imports no component.
"""

__version__ = "0.1.0"
