"""Watching the served models: live bin counts for drift, and the answers feedback joins.

On the serving path a request only adds to this worker's in-memory buffer (no Redis
call, no lock held for long): per model / version / time bucket, one count per feature
and bin, and the answers by prediction id. A daemon thread writes the buffer to Redis
every MONITORING_FLUSH_ROWS rows or MONITORING_FLUSH_S seconds in one pipelined round
trip. If Redis is slow or down the buffer is dropped and counted
(``tpotserve_monitoring_dropped_total``); a prediction never waits on it.

The Redis keys are listed in ``tpotserve.live``, which reads them back.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import Counter
from redis import Redis
from redis.exceptions import RedisError

from tpotserve.drift import Binner
from tpotserve.live import answers_key, counts_key
from tpotserve.settings import Settings, keeps_feedback_rows

from .background import ProcessThread, Throttle
from .loaded_model import LoadedModel

log = logging.getLogger(__name__)
MAX_PENDING_ANSWERS = 50_000
"""Answers a worker buffers at most between two flushes (a stuck Redis must not grow it without end)."""
WARN_EVERY_S = 60.0
_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""One encoder for every kept answer (``json.dumps`` with options builds a new one per call)."""


@functools.lru_cache(maxsize=256)
def _json_string(text: str) -> str:
    return _ENCODER.encode(text)

DROPPED = Counter(
    "tpotserve_monitoring_dropped",
    "Monitoring data an API worker dropped instead of slowing predictions: rows of counts not written "
    "(Redis slow or down) and answers not kept (buffer or hourly cap full), by what.",
    ["what"],
)


Answer = tuple[str, int, str, bytes]
"""A kept answer: (model, hour, prediction id, its JSON), for feedback to find by id."""


def admit_answers(redis: Redis, settings: Settings, answers: list[Answer], key: Callable[[str, int], str]
                  ) -> list[Answer]:
    """The answers within FEEDBACK_MAX_ANSWERS of their model and hour's hash ``key`` (one round trip)."""
    if not answers:
        return []
    hashes = sorted({(model, hour) for model, hour, _, _ in answers})
    pipe = redis.pipeline(transaction=False)
    for model, hour in hashes:
        pipe.hlen(key(model, hour))
    room = {pair: max(0, settings.feedback_max_answers - held) for pair, held in zip(hashes, pipe.execute())}
    kept = []
    for item in answers:
        if room[(item[0], item[1])] > 0:
            room[(item[0], item[1])] -= 1
            kept.append(item)
    return kept


def write_answers(pipe: Any, settings: Settings, kept: list[Answer], key: Callable[[str, int], str]) -> None:
    """Add the kept answers to ``pipe``: one HSET per hour and model, kept an hour past FEEDBACK_TTL_S."""
    by_hash: dict[tuple[str, int], dict[str, bytes]] = defaultdict(dict)
    for model, hour, prediction_id, raw in kept:
        by_hash[(model, hour)][prediction_id] = raw
    for (model, hour), mapping in by_hash.items():
        pipe.hset(key(model, hour), mapping=mapping)
        pipe.expire(key(model, hour), settings.feedback_ttl_s + 3600)


class _Counts:
    """One model / version / time bucket's counts since the last flush: ``Binner.count``'s flat
    vector, kept as a Python list for one-row requests (adding one to a list item costs a
    quarter of a numpy element's) and as a numpy vector for batches."""

    __slots__ = ("binner", "rows", "singles", "batches")

    def __init__(self, binner: Binner) -> None:
        self.binner = binner
        self.rows = 0
        self.singles = [0] * binner.length
        self.batches: np.ndarray | None = None

    def total(self) -> np.ndarray:
        singles = np.asarray(self.singles, dtype=np.int64)
        return singles if self.batches is None else singles + self.batches


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
        self._thread = ProcessThread(self._run, "tpotserve-monitoring")
        self._warning = Throttle(WARN_EVERY_S)

    # --- the serving path -----------------------------------------------------
    def record(self, model: LoadedModel, X: np.ndarray, predictions: list[Any], prediction_id: str) -> None:
        """Count ``X`` into ``model``'s drift bins and keep its answers under ``prediction_id``."""
        if not self.enabled:
            return
        self._thread.ensure()
        now = time.time()
        bucket = int(now // self.settings.monitoring_bucket_s)
        binner = model.binner
        slots = counts = None
        if binner is not None:
            if len(X) == 1:
                slots = binner.slots(X[0].tolist())
            else:
                counts = binner.count(X)
        if keeps_feedback_rows(self.settings, model.name):
            raw = _ENCODER.encode({"v": model.version, "p": predictions, "t": round(now, 3), "x": X.tolist()})
        else:  # the common case, formatted directly (a third of the encoder's time)
            raw = f'{{"v":{_json_string(model.version)},"p":{_ENCODER.encode(predictions)},"t":{now:.3f}}}'
        answer = (model.name, int(now // 3600), prediction_id, raw.encode())
        with self._lock:
            if binner is not None:
                key = (model.name, model.version, bucket)
                entry = self._counts.get(key)
                if entry is None:
                    entry = self._counts[key] = _Counts(binner)
                entry.rows += len(X)
                if slots is not None:
                    singles = entry.singles
                    for slot in slots:
                        singles[slot] += 1
                else:
                    entry.batches = counts if entry.batches is None else entry.batches + counts
            if len(self._answers) < MAX_PENDING_ANSWERS:
                self._answers.append(answer)
            else:
                DROPPED.labels("answers").inc()
            self._pending_rows += len(X)
            due = self._pending_rows >= self.settings.monitoring_flush_rows
        if due:
            self._wake.set()

    # --- the flushing thread ------------------------------------------------------
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
                bins, outside = entry.binner.split(entry.total())
                fields: dict[str, int] = {"rows": entry.rows}
                for j, column in enumerate(bins):
                    fields.update({f"f{j}:{i}": n for i, n in enumerate(column) if n})
                    if outside[j]:
                        fields[f"o{j}"] = outside[j]
                for name, value in fields.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, ttl)
            write_answers(pipe, self.settings, kept, answers_key)
            pipe.execute()
            return True
        except RedisError as exc:
            DROPPED.labels("count_rows").inc(sum(entry.rows for entry in counts.values()))
            DROPPED.labels("answers").inc(len(answers))
            if self._warning.due():
                log.warning("monitoring data dropped: Redis failed", extra={"fields": {
                    "event": "monitoring_dropped", "error": str(exc)[:200]}})
            return False

    def _admit(self, answers: list[Answer]) -> list[Answer]:
        kept = admit_answers(self.redis, self.settings, answers, answers_key)
        if len(kept) < len(answers):
            DROPPED.labels("answers").inc(len(answers) - len(kept))
        return kept
