"""The shadow, off the request's path: one runner thread per API worker.

After the served answer is computed, ``dataplane.infer`` hands a sampled share of the rows
(``shadow.json``'s ``share``, drawn per row; a batch gives at most SHADOW_MAX_BATCH_ROWS)
to :meth:`ShadowRunner.offer`, which only copies them into a bounded queue with
``put_nowait``: a full queue drops them and counts it (``tpotserve_shadow_dropped_total``);
the request never waits, reads no file and makes no Redis call for the shadow.

The runner thread loads the shadow version itself, verified exactly as a served version is
(``model_holder.load_version``: sha256, signature, smoke prediction), cached by version;
re-reads each model's shadow.json every MODEL_POLL_INTERVAL_S (the way the holders poll
current.json); answers the queued rows, compares them with the served answers, and writes
per (model, served, shadow) pair the counts, the latency histogram and the shadow's answers
to Redis, buffered and pipelined like ``monitoring.Monitor`` (keys in ``tpotserve.live``).
Redis down: the buffer is dropped and counted.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter
from redis import Redis
from redis.exceptions import RedisError

from tpotserve import live
from tpotserve import shadow as shadows
from tpotserve.drift import PROFILE_NAME
from tpotserve.registry import ModelRegistry
from tpotserve.settings import Settings

from .background import ProcessThread, Throttle
from .loaded_model import LoadedModel
from .model_holder import load_version
from .monitoring import Answer, admit_answers, write_answers

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0
MAX_PENDING_ANSWERS = 50_000

DROPPED = Counter(
    "tpotserve_shadow_dropped",
    "Sampled rows the shadow did not answer or record, by why: queue_full (the runner was behind), "
    "redis (the write failed), error (the shadow failed to load or predict), answers (cap reached).",
    ["what"],
)


@dataclass(frozen=True)
class _Config:
    """A model's shadow.json as the serving path needs it."""

    version: str
    share: float


@dataclass(frozen=True)
class _Item:
    model: str
    served: str
    task: str
    prediction_id: str
    rows: list[int]
    X: np.ndarray
    answers: list[Any]
    at: float


class ShadowRunner:
    """One per API worker process: the bounded queue, the thread, the loaded shadows."""

    def __init__(self, settings: Settings, registry: ModelRegistry, redis: Redis, background: bool = True) -> None:
        """``background`` False: no thread; whoever owns the runner calls :meth:`drain` (tests)."""
        self.settings = settings
        self.background = background
        self.registry = registry
        self.redis = redis
        self.enabled = settings.monitoring
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=settings.shadow_queue_size)
        self._configs: dict[str, _Config | None] = {}
        """Model name -> its shadow (None: none). Written by the runner thread only."""
        self._wanted: set[str] = set()
        self._loaded: dict[tuple[str, str], LoadedModel | None] = {}
        self._scales: dict[tuple[str, str], float | None] = {}
        self._lock = threading.Lock()
        self._pairs: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
        self._answers: list[tuple[str, int, str, bytes]] = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        self._last_poll = 0.0
        self._thread = ProcessThread(self._run, "tpotserve-shadow")
        self._warning = Throttle(WARN_EVERY_S)

    # --- the serving path -------------------------------------------------------------
    def offer(self, model: LoadedModel, X: np.ndarray, predictions: list[Any], prediction_id: str) -> None:
        """Queue a sample of this answer for the shadow, if ``model`` has one. Never blocks."""
        if not self.enabled:
            return
        if self.background:
            self._thread.ensure()
        config = self._configs.get(model.name)
        if config is None:
            if model.name not in self._configs and model.name not in self._wanted:
                with self._lock:
                    self._wanted.add(model.name)  # the runner reads its shadow.json at its next poll
            return
        if config.version == model.version:
            return  # promoted: nothing to compare
        n = len(X)
        if n == 1:
            if np.random.random() >= config.share:
                return
            rows = [0]
        else:
            picked = np.flatnonzero(np.random.random(n) < config.share)
            cap = self.settings.shadow_max_batch_rows
            if len(picked) > cap:
                picked = np.sort(np.random.choice(picked, cap, replace=False))
            if not len(picked):
                return
            rows = picked.tolist()
        item = _Item(model.name, model.version, model.meta.task, prediction_id, rows, X[rows].copy(),
                     [predictions[i] for i in rows], time.time())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            DROPPED.labels("queue_full").inc(len(rows))

    # --- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                self.step(timeout_s=min(self.settings.monitoring_flush_s, self.settings.model_poll_interval_s))
            except Exception:  # noqa: BLE001 - the runner must never die
                log.exception("shadow runner step failed")
                time.sleep(0.5)

    def step(self, timeout_s: float = 0.0) -> None:
        """One turn of the thread: poll the shadow.json files when due, answer what is queued,
        flush when due. Tests call :meth:`drain` instead."""
        if time.monotonic() - self._last_poll >= self.settings.model_poll_interval_s:
            self.poll()
        try:
            item = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            item = None
        if item is not None:
            self._answer(item)
        if self._pending_rows and (self._pending_rows >= self.settings.monitoring_flush_rows
                                   or time.monotonic() - self._last_flush >= self.settings.monitoring_flush_s):
            self.flush()

    def drain(self) -> bool:
        """Poll, answer everything queued and flush (synchronously); False if the flush failed."""
        self.poll()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._answer(item)
        return self.flush()

    def poll(self) -> None:
        """Re-read the shadow.json of every model this worker served; drop unused shadows."""
        self._last_poll = time.monotonic()
        with self._lock:
            names = self._wanted | set(self._configs)
            self._wanted = set()
        for name in names:
            try:
                doc = shadows.read(self.registry.store(name))
            except Exception:  # noqa: BLE001 - a model gone meanwhile
                doc = None
            self._configs[name] = _Config(doc["version"], float(doc.get("share") or self.settings.shadow_share)) \
                if doc is not None else None
        in_use = {(name, c.version) for name, c in self._configs.items() if c is not None}
        for key in [k for k in self._loaded if k not in in_use]:
            self._loaded.pop(key)

    def _shadow_model(self, name: str, version: str) -> LoadedModel | None:
        key = (name, version)
        if key not in self._loaded:
            started = time.perf_counter()
            try:
                self._loaded[key] = load_version(self.registry, name, version)
                log.info("model %s: shadow version %s loaded in %.0f ms", name, version,
                         (time.perf_counter() - started) * 1000)
            except Exception as exc:  # noqa: BLE001 - a bad shadow never touches serving
                log.error("model %s: shadow version %s refused: %s", name, version, exc)
                self._loaded[key] = None
        return self._loaded[key]

    def _scale(self, name: str, version: str) -> float | None:
        """The served version's training target std (from its profile.json), for regression agreement."""
        key = (name, version)
        if key not in self._scales:
            scale = None
            try:
                profile = json.loads(self.registry.store(name).read_document(version, PROFILE_NAME))
                std = float(profile["target"]["std"])
                scale = std if math.isfinite(std) and std > 0 else None
            except Exception:  # noqa: BLE001 - no profile: agreement relative to the answer itself
                scale = None
            self._scales[key] = scale
        return self._scales[key]

    def _answer(self, item: _Item) -> None:
        config = self._configs.get(item.model)
        if config is None or config.version == item.served:
            return  # the shadow was cleared (or promoted) meanwhile
        model = self._shadow_model(item.model, config.version)
        if model is None:
            DROPPED.labels("error").inc(len(item.rows))
            return
        started = time.perf_counter()
        try:
            predictions, _ = model.infer(item.X)
        except Exception:  # noqa: BLE001 - counted, never raised
            DROPPED.labels("error").inc(len(item.rows))
            return
        seconds = time.perf_counter() - started
        if item.task == "classification":
            agree = sum(str(a) == str(b) for a, b in zip(item.answers, predictions))
        else:
            scale = self._scale(item.model, item.served)
            agree = sum(abs(float(a) - float(b)) <= shadows.REGRESSION_TOLERANCE * (scale or max(abs(float(a)), 1e-12))
                        for a, b in zip(item.answers, predictions))
        bucket = next(i for i, upper in enumerate(shadows.LATENCY_BUCKETS_S) if seconds <= upper)
        fields = self._pairs[(item.model, item.served, config.version)]
        for name, value in (("rows", len(item.rows)), ("agree", agree), ("lat_s", seconds), ("lat_n", 1),
                            (f"h{bucket}", 1)):
            fields[name] = fields.get(name, 0) + value
        if len(self._answers) < MAX_PENDING_ANSWERS:
            raw = json.dumps({"s": item.served, "v": config.version, "r": item.rows, "p": predictions,
                              "t": round(item.at, 3)}, separators=(",", ":")).encode()
            self._answers.append((item.model, int(item.at // 3600), item.prediction_id, raw))
        else:
            DROPPED.labels("answers").inc(len(item.rows))
        self._pending_rows += len(item.rows)

    def flush(self) -> bool:
        """Write the buffered pair counts and shadow answers in one pipeline; False (and the
        buffer dropped, counted) if Redis failed."""
        pairs, self._pairs = self._pairs, defaultdict(dict)
        answers, self._answers = self._answers, []
        rows, self._pending_rows = self._pending_rows, 0
        self._last_flush = time.monotonic()
        if not pairs and not answers:
            return True
        try:
            kept = self._admit(answers)
            pipe = self.redis.pipeline(transaction=False)
            for (model, served, version), fields in pairs.items():
                key = live.shadow_key(model, served, version)
                for name, value in fields.items():
                    if name == "lat_s":
                        pipe.hincrbyfloat(key, name, value)
                    else:
                        pipe.hincrby(key, name, int(value))
                pipe.expire(key, self.settings.monitoring_retention_s)
            write_answers(pipe, self.settings, kept, live.shadow_answers_key)
            pipe.execute()
            return True
        except RedisError as exc:
            DROPPED.labels("redis").inc(rows)
            if self._warning.due():
                log.warning("shadow data dropped: Redis failed", extra={"fields": {
                    "event": "shadow_dropped", "error": str(exc)[:200]}})
            return False

    def _admit(self, answers: list[Answer]) -> list[Answer]:
        kept = admit_answers(self.redis, self.settings, answers, live.shadow_answers_key)
        if len(kept) < len(answers):
            DROPPED.labels("answers").inc(len(answers) - len(kept))
        return kept
