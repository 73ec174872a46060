"""The contract of the queue: queue names, job function names, timeouts, what an enqueue passes.

The API enqueues jobs *by name* so it never imports the trainer or TPOT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .schema import TrainingPayload
from .settings import Settings

if TYPE_CHECKING:
    from redis import Redis

TRAINING_QUEUE = "training"
"""Long TPOT runs. Exactly one worker consumes it, so trainings run one at a time, in
the order they were queued (docs/scaling.md)."""

CONTROL_QUEUE = "control"
"""Quick store operations (activate) that must not wait behind a training run."""

RETRAIN_FUNC = "tpotserve_trainer.jobs.retrain"
ACTIVATE_FUNC = "tpotserve_trainer.jobs.activate"
SET_POLICY_FUNC = "tpotserve_trainer.jobs.set_policy"
PROMOTE_SHADOW_FUNC = "tpotserve_trainer.jobs.promote_shadow"
"""Control queue: serve the shadow and end it, one step (kwargs: model, version, details, by)."""
SET_SHADOW_FUNC = "tpotserve_trainer.jobs.set_shadow"
"""Control queue: put a stored version in shadow (kwargs: version, model, share, reason, by)."""
CLEAR_SHADOW_FUNC = "tpotserve_trainer.jobs.clear_shadow"
"""Control queue: take a model's shadow out (kwargs: model, reason, by), e.g. when the scheduler
finds it timed out (``tpotserve.shadow.evaluate`` said "drop")."""

ENQUEUE_LOCK = "tpotserve:lock:enqueue-training"
"""Makes "is a training of this model queued or running? if not, enqueue" one step across
API workers and the scheduler, so two simultaneous POST /retrain of one model get one 202
and one 409. (That trainings then run one at a time, whichever model they train, is the
training queue's doing: it has one consumer.)"""

BOOTSTRAP_JOB_ID = "bootstrap"
"""Fixed id of the first training, so two starting workers cannot both enqueue one."""

ACTIVATE_TIMEOUT_S = 60
RESULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 7 * 24 * 3600

# RQ's statuses, folded into the four the API documents (plus canceled).
STATUS_MAP = {
    "queued": "queued",
    "deferred": "queued",
    "scheduled": "queued",
    "created": "queued",
    "started": "started",
    "finished": "finished",
    "failed": "failed",
    "stopped": "canceled",  # RQ stops a job only on request (DELETE /jobs/<id>)
    "canceled": "canceled",
}


def redis_client(settings: Settings, socket_timeout_s: float | None = None) -> Redis:
    """The Redis client for the queue: REDIS_TIMEOUT_S to connect and, by default, to wait for an
    answer (the API's request paths); the trainer's processes pass a longer wait for blocking reads."""
    from redis import Redis  # here: the contract package imports no Redis client at import time

    return Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout_s,
                          socket_timeout=settings.redis_timeout_s if socket_timeout_s is None else socket_timeout_s)


def rq_status(job: Any, refresh: bool = True) -> str:
    """An RQ job's status as RQ names it (``JobStatus`` is an enum; its value is the name)."""
    status = job.get_status(refresh=refresh)
    return str(getattr(status, "value", status))


def job_timeout(payload: TrainingPayload, margin_s: int) -> int:
    """RQ's job_timeout for a run: its budget plus a margin (RQ's default 180 s kills TPOT)."""
    return int(payload.max_time_mins * 60) + margin_s


def training_enqueue_args(payload: TrainingPayload, margin_s: int, **meta: Any) -> dict[str, Any]:
    """What every enqueue of a training passes RQ's ``Queue.enqueue`` (the API, the bootstrap,
    the scheduler): the payload, its timeout, how long its result is kept, and ``meta`` (kind,
    model, trigger) with the payload again, which the job view reads without unpickling the call."""
    dumped = payload.model_dump()
    return {"kwargs": {"payload": dumped}, "job_timeout": job_timeout(payload, margin_s), "result_ttl": RESULT_TTL_S,
            "failure_ttl": FAILURE_TTL_S, "meta": {**meta, "payload": dumped}}


def control_enqueue_args(kwargs: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What every enqueue of a control job (activate, shadow, policy) passes ``Queue.enqueue``."""
    return {"kwargs": kwargs, "job_timeout": ACTIVATE_TIMEOUT_S, "result_ttl": RESULT_TTL_S,
            "failure_ttl": FAILURE_TTL_S, "meta": meta}
