"""Watching the served models: live bin counts for drift, and the answers feedback joins.

On the serving path a request only adds to this worker's in-memory buffer (no Redis
call, no lock held for long): per model / version / time bucket, one count per feature
and bin, and the answers by prediction id. A daemon thread writes the buffer to Redis
every MONITORING_FLUSH_ROWS rows or MONITORING_FLUSH_S seconds in one pipelined round
trip. If Redis is slow or down the buffer is dropped and counted
(``tpotserve_monitoring_dropped_total``); a prediction never waits on it.

Redis keys (``tpotserve:mon:`` prefix), each with a TTL:

    counts:<model>:<version>:<bucket>    hash: rows, f<j>:<bin>, o<j> (out of the training range)
    answers:<model>:<hour>               hash: prediction id -> JSON: version, predictions (and rows,
                                         when kept), time; at most FEEDBACK_MAX_ANSWERS fields
    quality:<model>:<version>:<bucket>   hash: n, correct | abs, sq, y, y2
    skips:<model>                        hash: feedback skipped, by reason
    labelled:<model>                     list: labelled live rows (FEEDBACK_KEEP_ROWS only)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter
from redis import Redis
from redis.exceptions import RedisError

from tpotserve.drift import Binner
from tpotserve.settings import Settings, keeps_feedback_rows

from .loaded_model import LoadedModel

log = logging.getLogger(__name__)
PREFIX = "tpotserve:mon:"
MAX_PENDING_ANSWERS = 50_000
"""Answers a worker buffers at most between two flushes (a stuck Redis must not grow it without end)."""
WARN_EVERY_S = 60.0

DROPPED = Counter(
    "tpotserve_monitoring_dropped",
    "Monitoring data an API worker dropped instead of slowing predictions: rows of counts not written "
    "(Redis slow or down) and answers not kept (buffer or hourly cap full), by what.",
    ["what"],
)


def counts_key(model: str, version: str, bucket: int) -> str:
    return f"{PREFIX}counts:{model}:{version}:{bucket}"


def answers_key(model: str, hour: int) -> str:
    return f"{PREFIX}answers:{model}:{hour}"


def fed_key(model: str, prediction_id: str, row: int) -> str:
    """Set once feedback for that row was counted: each row counts once."""
    return f"{PREFIX}fed:{model}:{prediction_id}:{row}"


def quality_key(model: str, version: str, bucket: int) -> str:
    return f"{PREFIX}quality:{model}:{version}:{bucket}"


def skips_key(model: str) -> str:
    return f"{PREFIX}skips:{model}"


def labelled_key(model: str) -> str:
    return f"{PREFIX}labelled:{model}"


@dataclass
class _Counts:
    rows: int
    counts: np.ndarray
    """``Binner.count``'s flat vector, summed."""
    binner: Binner


class Monitor:
    """One per API worker process: the buffer and the thread that flushes it."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.enabled = settings.monitoring
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, int], _Counts] = {}
        self._answers: list[tuple[str, int, str, bytes]] = []
        self._pending_rows = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._last_warning = -WARN_EVERY_S

    # --- the serving path -----------------------------------------------------
    def record(self, model: LoadedModel, X: np.ndarray, predictions: list[Any], prediction_id: str) -> None:
        """Count ``X`` into ``model``'s drift bins and keep its answers under ``prediction_id``."""
        if not self.enabled:
            return
        self._ensure_thread()
        now = time.time()
        bucket = int(now // self.settings.monitoring_bucket_s)
        binner = model.binner
        slots = counts = None
        if binner is not None:
            if len(X) == 1:
                slots = binner.slots(X[0].tolist())
            else:
                counts = binner.count(X)
        answer: dict[str, Any] = {"v": model.version, "p": predictions, "t": round(now, 3)}
        if keeps_feedback_rows(self.settings, model.name):
            answer["x"] = X.tolist()
        raw = json.dumps(answer, separators=(",", ":")).encode()
        with self._lock:
            if binner is not None:
                key = (model.name, model.version, bucket)
                entry = self._counts.get(key)
                if entry is None:
                    entry = self._counts[key] = _Counts(0, np.zeros(binner.length, dtype=np.int64), binner)
                entry.rows += len(X)
                if slots is not None:
                    for slot in slots:
                        entry.counts[slot] += 1
                else:
                    entry.counts += counts
            if len(self._answers) < MAX_PENDING_ANSWERS:
                self._answers.append((model.name, int(now // 3600), prediction_id, raw))
            else:
                DROPPED.labels("answers").inc()
            self._pending_rows += len(X)
            due = self._pending_rows >= self.settings.monitoring_flush_rows
        if due:
            self._wake.set()

    # --- the flushing thread ------------------------------------------------------
    def _ensure_thread(self) -> None:
        # Started on first use in this process: Gunicorn forks workers after create_app
        # in some setups, and a thread does not survive a fork.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="tpotserve-monitoring", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.settings.monitoring_flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> bool:
        """Write the buffer to Redis; False (and the buffer dropped, counted) if Redis failed."""
        with self._lock:
            counts, self._counts = self._counts, {}
            answers, self._answers = self._answers, []
            self._pending_rows = 0
        if not counts and not answers:
            return True
        try:
            kept = self._admit(answers)
            pipe = self.redis.pipeline(transaction=False)
            ttl = self.settings.monitoring_retention_s
            for (model, version, bucket), entry in counts.items():
                key = counts_key(model, version, bucket)
                bins, outside = entry.binner.split(entry.counts)
                fields: dict[str, int] = {"rows": entry.rows}
                for j, column in enumerate(bins):
                    fields.update({f"f{j}:{i}": n for i, n in enumerate(column) if n})
                    if outside[j]:
                        fields[f"o{j}"] = outside[j]
                for name, value in fields.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, ttl)
            by_hash: dict[tuple[str, int], dict[str, bytes]] = defaultdict(dict)
            for model, hour, prediction_id, raw in kept:
                by_hash[(model, hour)][prediction_id] = raw
            for (model, hour), mapping in by_hash.items():
                pipe.hset(answers_key(model, hour), mapping=mapping)  # one command per hour and model
                pipe.expire(answers_key(model, hour), self.settings.feedback_ttl_s + 3600)
            pipe.execute()
            return True
        except RedisError as exc:
            DROPPED.labels("count_rows").inc(sum(entry.rows for entry in counts.values()))
            DROPPED.labels("answers").inc(len(answers))
            if time.monotonic() - self._last_warning > WARN_EVERY_S:  # one line a minute, not one a flush
                self._last_warning = time.monotonic()
                log.warning("monitoring data dropped: Redis failed", extra={"fields": {
                    "event": "monitoring_dropped", "error": str(exc)[:200]}})
            return False

    def _admit(self, answers: list[tuple[str, int, str, bytes]]) -> list[tuple[str, int, str, bytes]]:
        """The answers within FEEDBACK_MAX_ANSWERS of their model and hour (one round trip)."""
        if not answers:
            return []
        hashes = sorted({(model, hour) for model, hour, _, _ in answers})
        pipe = self.redis.pipeline(transaction=False)
        for model, hour in hashes:
            pipe.hlen(answers_key(model, hour))
        room = {key: max(0, self.settings.feedback_max_answers - held) for key, held in zip(hashes, pipe.execute())}
        kept = []
        for item in answers:
            if room[(item[0], item[1])] > 0:
                room[(item[0], item[1])] -= 1
                kept.append(item)
        if len(kept) < len(answers):
            DROPPED.labels("answers").inc(len(answers) - len(kept))
        return kept


# --- reading back -------------------------------------------------------------------
def buckets(settings: Settings, since: float, until: float) -> list[int]:
    """The time buckets that overlap [since, until]."""
    size = settings.monitoring_bucket_s
    return list(range(int(since // size), int(until // size) + 1))


def find_answers(redis: Redis, settings: Settings, model: str, prediction_ids: list[str]) -> list[bytes | None]:
    """What the stack answered under each prediction id (None: unknown or expired), newest hour first."""
    if not prediction_ids:
        return []
    now_hour = int(time.time() // 3600)
    hours = range(now_hour, now_hour - settings.feedback_ttl_s // 3600 - 2, -1)
    pipe = redis.pipeline(transaction=False)
    for hour in hours:
        pipe.hmget(answers_key(model, hour), prediction_ids)
    found: list[bytes | None] = [None] * len(prediction_ids)
    for values in pipe.execute():
        for i, value in enumerate(values):
            if found[i] is None and value is not None:
                found[i] = value
    cutoff = time.time() - settings.feedback_ttl_s
    return [raw if raw is not None and json.loads(raw)["t"] >= cutoff else None for raw in found]


def live_counts(redis: Redis, model: str, version: str, sizes: list[int], bucket_ids: list[int]
                ) -> tuple[int, list[list[int]], list[int]]:
    """Rows, per-feature bin counts and out-of-range counts of ``version`` over ``bucket_ids``."""
    pipe = redis.pipeline(transaction=False)
    for bucket in bucket_ids:
        pipe.hgetall(counts_key(model, version, bucket))
    rows = 0
    bins = [[0] * size for size in sizes]
    outside = [0] * len(sizes)
    for found in pipe.execute():
        for raw_name, raw_value in found.items():
            name, value = raw_name.decode(), int(raw_value)
            if name == "rows":
                rows += value
            elif name.startswith("f"):
                j, _, i = name[1:].partition(":")
                if int(j) < len(sizes) and int(i) < sizes[int(j)]:
                    bins[int(j)][int(i)] += value
            elif name.startswith("o") and int(name[1:]) < len(sizes):
                outside[int(name[1:])] += value
    return rows, bins, outside
