"""The functions RQ runs. The API enqueues them by name (``tpotserve.jobs``).

Both validate their payload again: the queue is a trust boundary too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import joblib
from rq import get_current_job

from tpotserve.errors import TpotServeError
from tpotserve.schema import TrainingPayload
from tpotserve.settings import load_settings
from tpotserve.store import ModelStore, new_version_id

from . import automl, data

log = logging.getLogger(__name__)


def retrain(payload: dict[str, Any]) -> dict[str, Any]:
    """Run TPOT for ``payload``, write a new immutable version, make it current."""
    settings = load_settings()
    store = ModelStore(settings.model_dir)
    started = time.monotonic()
    report = _Progress(budget_mins=payload.get("max_time_mins"), started=started)
    try:
        run = TrainingPayload.model_validate(payload)
        report("loading_data")
        X, y = data.load(run.dataset, run.target)
        report("searching", rows=len(X), features=X.shape[1])
        result = automl.search(run, X, y)
        report("publishing", cv_score=result.cv_score)
        meta = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "task": run.task,
            "dataset": run.dataset,
            "target": run.target,
            "features": data.feature_schema(X),
            "classes": result.classes,
            "cv_score": result.cv_score,
            "scoring": run.scoring,
            "training_rows": len(X),
            "tpot_settings": run.model_dump(exclude={"reason"}),
            "pipeline": result.pipeline_text,
            "evaluated_pipelines": result.evaluated_pipelines,
            "training_seconds": round(time.monotonic() - started, 1),
            "library_versions": automl.library_versions(),
            "job_id": _job_id(),
            "reason": run.reason,
        }
        version = new_version_id()
        meta = store.write_version(version, lambda path: joblib.dump(result.pipeline, path), meta)
        store.set_current(version)
    except TpotServeError as exc:
        report.fail(exc.message)
        raise
    report("done", cv_score=result.cv_score)
    log.info("published model %s (cv %s %.4f)", version, run.scoring, result.cv_score)
    return {
        "version": version,
        "cv_score": result.cv_score,
        "scoring": run.scoring,
        "published": True,
        "pipeline": result.pipeline_text,
        "sha256": meta["sha256"],
        "training_seconds": meta["training_seconds"],
    }


def activate(version: str) -> dict[str, Any]:
    """Point current.json at a stored version (rollback), after verifying its hash."""
    store = ModelStore(load_settings().model_dir)
    try:
        pointer = store.set_current(str(version))
    except TpotServeError as exc:
        job = get_current_job()
        if job is not None:
            job.meta["error"] = exc.message
            job.save_meta()
        raise
    return {"version": pointer.version, "sha256": pointer.sha256}


class _Progress:
    """Writes the job's stage and timing into job.meta for GET /jobs/<id>."""

    def __init__(self, budget_mins: Any, started: float) -> None:
        self.job = get_current_job()
        self.budget_mins = budget_mins
        self.started = started

    def __call__(self, stage: str, **extra: Any) -> None:
        if self.job is None:
            return
        self.job.meta["progress"] = {
            "stage": stage,
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "budget_mins": self.budget_mins,
            **extra,
        }
        self.job.save_meta()

    def fail(self, message: str) -> None:
        if self.job is None:
            return
        self.job.meta["error"] = message
        self.job.save_meta()


def _job_id() -> str | None:
    job = get_current_job()
    return job.id if job else None
