"""Timestamps as the project writes them: ISO 8601, UTC, whole seconds, ``Z``.

``2024-01-01T00:00:00Z``: in model and data set metadata, backup manifests, job
descriptions, health answers and benchmark results.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_iso(ts: float | datetime | None = None) -> str:
    """``ts`` (epoch seconds or a datetime; None: now) as ``YYYY-MM-DDTHH:MM:SSZ``.

    An aware datetime is converted to UTC; a naive one is taken to be UTC already,
    as RQ's job timestamps are.
    """
    if isinstance(ts, datetime):
        if ts.tzinfo is not None:
            ts = ts.astimezone(timezone.utc)
        return ts.strftime(ISO_FORMAT)
    return time.strftime(ISO_FORMAT, time.gmtime(ts))
