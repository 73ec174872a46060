"""The functions RQ runs. The API enqueues them by name (``tpotserve.jobs``).

Both validate their payload again: the queue is a trust boundary too.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import joblib
from redis import Redis
from redis.exceptions import LockError, RedisError, WatchError
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from tpotserve.datasets import DatasetStore
from tpotserve.jobs import CANCEL_KEY
from tpotserve.errors import TpotServeError, TrainingFailed
from tpotserve.schema import TrainingPayload
from tpotserve.settings import Settings, load_settings, signing_key
from tpotserve.store import ModelStore, new_version_id

from . import automl, data

log = logging.getLogger(__name__)

TRAINING_LOCK = "tpotserve:lock:training"
"""Held by the one training that runs, whichever RQ worker runs it (value: its job id)."""
PUBLISH_LOCK = "tpotserve:lock:publish"
"""Held around "gate, write, point current.json, prune", by a training and by activate alike."""
PUBLISH_LOCK_TTL_S = 120


def retrain(payload: dict[str, Any]) -> dict[str, Any]:
    """Run TPOT for ``payload``, store a new immutable version, publish it if it passes the gate."""
    settings = load_settings()
    store = ModelStore(settings.model_dir, signing_key(settings))
    datasets = DatasetStore.from_settings(settings)
    started = time.monotonic()
    report = _Progress(budget_mins=payload.get("max_time_mins"), started=started)
    resources = ExitStack()
    try:
        run = TrainingPayload.model_validate(payload)
        redis = _redis(settings)
        _stop_if_canceled(redis)
        # One training at a time across every RQ worker (--scale worker=N): wait for the lock.
        lock = resources.enter_context(_training_lock(redis, settings, report))
        if run.reason == "bootstrap" and store.read_pointer_quietly() is not None:
            # Several starting training workers may each have enqueued it; the first one trained.
            report("done", skipped="a model is already current")
            return {"version": None, "published": False, "skipped": "a model is already current"}
        with _publish_lock(redis):
            # Only one training runs at a time: any versions/.tmp-* is a dead writer's.
            store.remove_stale_temp()
        # Where the search runs: a Dask cluster (fails here, at once, if unreachable) or TPOT's local one.
        compute = resources.enter_context(automl.compute_for(settings, run))
        report("loading_data", compute=compute.info)
        X, y = data.load(datasets, run)
        X_train, X_hold, y_train, y_hold = data.holdout_split(X, y, run)
        report("searching", rows=len(X), training_rows=len(X_train), holdout_rows=len(X_hold),
               features=X.shape[1], generations_planned=run.generations)
        result = automl.search(run, X_train, y_train, report=report.generation, compute=compute)
        if compute.client is not None:
            compute.info["workers_at_end"] = compute.workers_now()
        report("scoring", cv_score=result.cv_score, compute=compute.info)
        new_score = automl.holdout_score(
            result.pipeline, X_hold, y_hold, run.scoring, result.classes, result.label_encoded
        )
        # Gate and publish as one step against other publishers (activate, a training that lost its lock).
        publishing = resources.enter_context(ExitStack())
        publishing.enter_context(_publish_lock(redis))
        lock.check()
        gate = promotion_gate(store, run, list(X.columns), new_score, X_hold, y_hold)
        report("publishing", cv_score=result.cv_score, holdout_score=new_score)
        meta = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "task": run.task,
            "dataset": run.dataset,
            "dataset_sha256": run.dataset_sha256,
            "target": run.target,
            "features": data.feature_schema(X),
            "classes": result.classes,
            "label_encoded": result.label_encoded,
            "cv_score": result.cv_score,
            "holdout_score": new_score,
            "scoring": run.scoring,
            "training_rows": len(X_train),
            "holdout_rows": len(X_hold),
            "tpot_settings": run.model_dump(exclude={"reason", "model_keep"}),
            "pipeline": result.pipeline_text,
            "evaluated_pipelines": result.evaluated_pipelines,
            "training_seconds": round(time.monotonic() - started, 1),
            "compute": compute.info,
            "library_versions": automl.library_versions(),
            "job_id": _job_id(),
            "reason": run.reason,
            "gate": gate,
        }
        version = new_version_id()
        meta = store.write_version(version, lambda path: joblib.dump(result.pipeline, path), meta)
        if gate["promoted"]:
            store.set_current(version)
        pruned = store.prune(run.model_keep)
        publishing.close()
    except TpotServeError as exc:
        report.fail(exc.message)
        log.error("training failed", extra={"fields": {"event": "job_failed", "job_id": _job_id(),
                                                       "error": exc.message, "elapsed_s": _since(started)}})
        raise
    except Exception as exc:
        log.error("training failed", extra={"fields": {"event": "job_failed", "job_id": _job_id(),
                                                       "error": f"{type(exc).__name__}: {exc}",
                                                       "elapsed_s": _since(started)}})
        raise
    finally:
        # The publish lock (if still held), the Dask client, then the training lock.
        resources.close()
    report("done", cv_score=result.cv_score, holdout_score=new_score)
    log.info(
        "training finished",
        extra={
            "fields": {
                "event": "job_finished",
                "job_id": _job_id(),
                "dataset": run.dataset,
                "task": run.task,
                "version": version,
                "cv_score": result.cv_score,
                "holdout_score": new_score,
                "scoring": run.scoring,
                "promoted": gate["promoted"],
                "elapsed_s": _since(started),
            }
        },
    )
    return {
        "version": version,
        "cv_score": result.cv_score,
        "holdout_score": new_score,
        "scoring": run.scoring,
        "published": gate["promoted"],
        "gate": gate,
        "pipeline": result.pipeline_text,
        "sha256": meta["sha256"],
        "training_seconds": meta["training_seconds"],
        "compute": compute.info,
        "pruned_versions": pruned,
    }


def promotion_gate(
    store: ModelStore,
    run: TrainingPayload,
    features: list[str],
    new_score: float,
    X_hold: Any,
    y_hold: Any,
) -> dict[str, Any]:
    """Decide whether the new version becomes current, and say why.

    auto: publish unless the current model, scored on the same holdout rows,
    does better. The current model can only be compared when it predicts the
    same target from the same features; otherwise the new model wins.
    """
    gate: dict[str, Any] = {"mode": run.promote, "new_holdout_score": new_score, "current_version": None,
                            "current_holdout_score": None}
    if run.promote == "always":
        return {**gate, "promoted": True, "reason": "promote=always"}
    if run.promote == "never":
        return {**gate, "promoted": False, "reason": "promote=never: stored, not served"}
    current = _current_comparable(store, run, features)
    if current is None:
        return {**gate, "promoted": True, "reason": "no comparable current model (different data schema or none)"}
    version, meta, model = current
    try:
        current_score = automl.holdout_score(
            model, X_hold, y_hold, run.scoring, meta.get("classes"), bool(meta.get("label_encoded"))
        )
    except Exception as exc:  # noqa: BLE001 - e.g. the old model never saw a class in the holdout
        return {**gate, "current_version": version, "promoted": True,
                "reason": f"the current model could not be scored on the holdout ({type(exc).__name__})"}
    gate.update(current_version=version, current_holdout_score=current_score)
    if new_score >= current_score:
        return {**gate, "promoted": True, "reason": "not worse than the current model on the holdout"}
    return {**gate, "promoted": False, "reason": "worse than the current model on the holdout; current kept"}


def _current_comparable(store: ModelStore, run: TrainingPayload, features: list[str]) -> tuple | None:
    pointer = store.read_pointer_quietly()
    if pointer is None:
        return None
    try:
        meta = store.read_meta(pointer.version)
    except TpotServeError:
        return None
    same_schema = (
        [f["name"] for f in meta.get("features", [])] == features
        and meta.get("target") == run.target
        and meta.get("task") == run.task
    )
    if not same_schema:
        return None
    try:
        # Verified before unpickling, as in the API. A broken current model must
        # not block its own replacement: it is simply not comparable.
        path = store.verified_artifact(pointer.version, pointer.sha256)
    except TpotServeError:
        return None
    return pointer.version, meta, joblib.load(path)


def activate(version: str) -> dict[str, Any]:
    """Point current.json at a stored version (rollback), after verifying its hash."""
    settings = load_settings()
    store = ModelStore(settings.model_dir, signing_key(settings))
    try:
        with _publish_lock(_redis(settings)):
            pointer = store.set_current(str(version))
    except TpotServeError as exc:
        job = get_current_job()
        if job is not None:
            job.meta["error"] = exc.message
            job.save_meta()
        raise
    return {"version": pointer.version, "sha256": pointer.sha256}


def _redis(settings: Settings) -> Redis:
    """The job's own Redis connection (RQ's), or one from REDIS_URL outside a worker."""
    job = get_current_job()
    return job.connection if job is not None else Redis.from_url(settings.redis_url)


class _TrainingLock:
    """The Redis lock that lets one training run at a time, whichever worker runs it.

    A redis-py Lock with a TTL (TRAINING_LOCK_TTL_S), renewed by a thread every
    third of it: a work-horse that is killed (cancel, OOM, a lost container)
    frees it within the TTL. ``thread_local=False``: the renewing thread must
    see the token. The value names the holder's job id, for the waiting job's
    progress, and so that a waiter need not sit out the TTL of a holder that RQ
    has already recorded as ended (stopped by DELETE /jobs, failed, abandoned):
    its horse is gone, the lock is taken over. A holder that could not renew
    (Redis gone, a stall past the TTL, a lock taken over) is marked lost and
    refuses to publish (:meth:`check`).
    """

    def __init__(self, redis: Redis, ttl_s: int, holder: str) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.lock = redis.lock(TRAINING_LOCK, timeout=ttl_s, thread_local=False)
        self.token = f"{holder}/{secrets.token_hex(4)}"
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> str | None:
        value = self.redis.get(TRAINING_LOCK)
        return value.decode(errors="replace").split("/", 1)[0] if value else None

    def acquire(self, wait_s: float, waiting: Callable[[str | None], None]) -> float:
        """Take the lock, waiting up to ``wait_s``; returns the seconds waited."""
        started = time.monotonic()
        seen: str | None = None
        while not self.lock.acquire(blocking=False, token=self.token):
            other = self.holder()
            if other is not None and self._ended(other):
                self._take_over_from(other)
                continue
            if other != seen:
                seen = other
                waiting(other)
            if time.monotonic() - started > wait_s:
                raise TrainingFailed(
                    f"another training (job {other}) still held the training lock after {wait_s:g} s; "
                    "nothing was trained and the served model is unchanged"
                )
            time.sleep(0.25)
        self._renewer = threading.Thread(target=self._renew, name="training-lock", daemon=True)
        self._renewer.start()
        return time.monotonic() - started

    def _ended(self, job_id: str) -> bool:
        """RQ has recorded the holder's job as ended, so no horse of it runs any more."""
        try:
            status = Job.fetch(job_id, connection=self.redis).get_status(refresh=False)
        except NoSuchJobError:
            return False  # unknown: wait for the TTL rather than guess
        return str(getattr(status, "value", status)) in ("finished", "failed", "stopped", "canceled")

    def _take_over_from(self, job_id: str) -> None:
        """Delete the lock if ``job_id`` still holds it (the next acquire takes it)."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(TRAINING_LOCK)
                value = pipe.get(TRAINING_LOCK)
                if value and value.decode(errors="replace").split("/", 1)[0] == job_id:
                    pipe.multi()
                    pipe.delete(TRAINING_LOCK)
                    pipe.execute()
                    log.warning("took the training lock over from ended job %s", job_id)
            except WatchError:
                pass  # it changed meanwhile: look again

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.lock.reacquire()
            except (LockError, RedisError) as exc:
                self.lost = True
                log.error("lost the training lock: %s", exc)
                return

    def check(self) -> None:
        """Fail rather than publish if another training may have run meanwhile."""
        try:
            owned = not self.lost and self.lock.owned()
        except RedisError:
            owned = False
        if not owned:
            raise TrainingFailed(
                "this training lost its lock (Redis unreachable, or stalled past TRAINING_LOCK_TTL_S): "
                "not publishing; the served model is unchanged"
            )

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            self.lock.release()
        except (LockError, RedisError):
            pass  # expired or taken over: nothing of ours to release


@contextmanager
def _training_lock(redis: Redis, settings: Settings, report: _Progress) -> Iterator[_TrainingLock]:
    lock = _TrainingLock(redis, settings.training_lock_ttl_s, _job_id() or "local")

    def waiting(holder: str | None) -> None:
        report("waiting", waiting_for=holder)

    try:
        waited = lock.acquire(settings.training_lock_wait_s, waiting)
    except RedisError as exc:
        raise TrainingFailed(f"could not take the training lock in Redis ({type(exc).__name__})") from exc
    report.state.pop("waiting_for", None)
    report.note(lock_waited_s=round(waited, 1), lock_acquired_at=time.time())
    try:
        yield lock
    finally:
        lock.release()
        report.note(lock_released_at=time.time())


def _stop_if_canceled(redis: Redis) -> None:
    """DELETE /jobs/<id> may land after a worker took the job but before RQ marked it
    started; the API leaves a marker, and the job ends here, before any work."""
    job_id = _job_id()
    if job_id and redis.exists(CANCEL_KEY.format(job_id=job_id)):
        raise TrainingFailed("canceled by request (DELETE /jobs) before it started")


@contextmanager
def _publish_lock(redis: Redis) -> Iterator[None]:
    """Gate + write + current.json + prune, one publisher at a time.

    A second publisher waits, then gates against what the first one published."""
    lock = redis.lock(PUBLISH_LOCK, timeout=PUBLISH_LOCK_TTL_S, blocking_timeout=PUBLISH_LOCK_TTL_S)
    try:
        if not lock.acquire():
            raise TrainingFailed(f"another publish held the model store for over {PUBLISH_LOCK_TTL_S} s")
    except RedisError as exc:
        raise TrainingFailed(f"could not take the publish lock in Redis ({type(exc).__name__})") from exc
    try:
        yield
    finally:
        try:
            lock.release()
        except (LockError, RedisError):
            pass


class _Progress:
    """Writes the job's progress into job.meta for GET /jobs/<id>.

    Fields accumulate across stages (rows, generation, best score...), so a
    reader always sees the latest value of each.
    """

    def __init__(self, budget_mins: Any, started: float) -> None:
        self.job = get_current_job()
        self.started = started
        self.state: dict[str, Any] = {"budget_mins": budget_mins}

    def __call__(self, stage: str, **extra: Any) -> None:
        self.state.update(extra)
        self.state["stage"] = stage
        self.state["elapsed_s"] = round(time.monotonic() - self.started, 1)
        if self.job is None:
            return
        self.job.meta["progress"] = dict(self.state)
        self.job.save_meta()

    def note(self, **fields: Any) -> None:
        """Facts about the run outside ``progress`` (lock times), for GET /jobs and the tests."""
        if self.job is None:
            return
        self.job.meta.setdefault("run", {}).update(fields)
        self.job.save_meta()

    def generation(self, summary: dict[str, Any]) -> None:
        """Called by the TPOT evolver after each generation."""
        self("searching", **summary)

    def fail(self, message: str) -> None:
        if self.job is None:
            return
        self.job.meta["error"] = message
        self.job.save_meta()


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


def _job_id() -> str | None:
    job = get_current_job()
    return job.id if job else None
