"""tpotserve.clock.utc_iso: the one timestamp format, from epoch seconds or RQ's datetimes."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from tpotserve.clock import utc_iso


def test_epoch_seconds_are_formatted_in_utc() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00Z"
    assert utc_iso(1704067200.9) == "2024-01-01T00:00:00Z"  # whole seconds, not rounded up


def test_none_is_now() -> None:
    before = int(time.time())
    stamp = utc_iso()
    after = time.time()
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert before <= parsed <= after


def test_naive_datetimes_are_taken_as_utc_and_aware_ones_converted() -> None:
    assert utc_iso(datetime(2024, 1, 1, 12, 30, 5, 999_999)) == "2024-01-01T12:30:05Z"
    plus_two = timezone(timedelta(hours=2))
    assert utc_iso(datetime(2024, 1, 1, 14, 30, 5, tzinfo=plus_two)) == "2024-01-01T12:30:05Z"
