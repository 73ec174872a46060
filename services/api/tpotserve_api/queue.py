"""The API's side of the queue: enqueue by name, read job state.

Every Redis failure becomes :class:`QueueUnavailable` (503 + Retry-After), so
a dead Redis costs a write endpoint at most the socket timeout and never
touches /predict.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job
from rq.registry import DeferredJobRegistry, StartedJobRegistry

from tpotserve import jobs
from tpotserve.errors import Conflict, NotFound, QueueUnavailable
from tpotserve.schema import TrainingPayload
from tpotserve.settings import Settings


ENQUEUE_LOCK = "tpotserve:lock:enqueue-training"
# Statuses of a training that has not ended yet (RQ's names).
_PENDING = ("queued", "deferred", "scheduled", "started")


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise QueueUnavailable(f"the job queue (Redis) is unavailable: {type(exc).__name__}") from exc


class JobQueue:
    """Enqueue training and control jobs; describe jobs as JSON."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
        )
        self.training = Queue(jobs.TRAINING_QUEUE, connection=self.redis)
        self.control = Queue(jobs.CONTROL_QUEUE, connection=self.redis)

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except RedisError:
            return False

    def enqueue_retrain(self, payload: TrainingPayload, *, queue_behind: bool = False) -> Job:
        """Enqueue a training; Conflict (409) while another is queued or running, unless asked to queue."""
        with _redis_errors():
            # A short lock makes "check, then enqueue" one step across API workers.
            with self.redis.lock(ENQUEUE_LOCK, timeout=10, blocking_timeout=5):
                active = self.active_training()
                if active is not None and not queue_behind:
                    raise Conflict(
                        f"a training is already {active['status']}: job {active['id']}; "
                        "wait for it, cancel it, or send \"queue\": true",
                        field=None,
                        job_id=active["id"],
                        location=f"/jobs/{active['id']}",
                    )
                # With several training workers a queued training would start at once and
                # only wait on the trainer's Redis lock. Make it wait for the last training in
                # line instead (an RQ dependency that holds however that one ends), so trainings
                # start in order, each after the previous one has ended. The trainer's lock
                # remains what guarantees one at a time (tpotserve_trainer.jobs).
                tail = self._training_tail() if active is not None else None
                return self.training.enqueue(
                    jobs.RETRAIN_FUNC,
                    kwargs={"payload": payload.model_dump()},
                    job_timeout=jobs.job_timeout(payload, self.settings.job_timeout_margin_s),
                    result_ttl=jobs.RESULT_TTL_S,
                    failure_ttl=jobs.FAILURE_TTL_S,
                    meta={"kind": payload.reason, "payload": payload.model_dump()},
                    depends_on=Dependency(jobs=[tail], allow_failure=True) if tail else None,
                )

    def _training_tail(self) -> str | None:
        """The most recently created training that has not ended (running, queued or deferred)."""
        ids = [
            *StartedJobRegistry(queue=self.training).get_job_ids(),
            *self.training.get_job_ids(),
            *DeferredJobRegistry(queue=self.training).get_job_ids(),
        ]
        pending = [
            job
            for job in Job.fetch_many(list(dict.fromkeys(ids)), connection=self.redis)
            if job is not None and _status(job) in _PENDING
        ]
        return max(pending, key=lambda job: job.created_at).id if pending else None

    def active_training(self) -> dict[str, str] | None:
        """The running (or else the oldest queued) training job, if any."""
        with _redis_errors():
            registry = StartedJobRegistry(queue=self.training)
            registry.cleanup()  # a dead worker's job is failed, not running
            running = registry.get_job_ids()
            if running:
                return {"id": running[0], "status": "running"}
            queued = self.training.get_job_ids(0, 0)
            if queued:
                return {"id": queued[0], "status": "queued"}
            # Waiting behind another training (queue=true): it has not run yet.
            deferred = DeferredJobRegistry(queue=self.training).get_job_ids()
            for job in Job.fetch_many(deferred, connection=self.redis):
                if job is not None and _status(job) == "deferred":
                    return {"id": job.id, "status": "queued"}
            return None

    def cancel(self, job: Job) -> str:
        """Cancel a queued job or stop a running one; returns the status to report."""
        with _redis_errors():
            status = str(getattr(job.get_status(refresh=True), "value", job.get_status()))
            if status in ("queued", "deferred", "scheduled", "started"):
                # First the marker the trainer checks when it starts: a worker may
                # have dequeued the job a moment ago, while RQ still says queued.
                self.redis.set(jobs.CANCEL_KEY.format(job_id=job.id), 1, ex=jobs.CANCEL_KEY_TTL_S)
            if status in ("queued", "deferred", "scheduled"):
                # A training queued behind this one takes its place in line.
                job.cancel(enqueue_dependents=True)
                return "canceled"
            if status == "started":
                # The worker kills the work-horse's process group (TPOT's Dask processes too);
                # RQ then records the job as stopped, which /jobs reports as canceled.
                send_stop_job_command(self.redis, job.id)
                # RQ never releases the dependents of a stopped job: release them now. The next
                # one waits on the trainer's lock until the stopped horse's lock is gone.
                if job.origin == jobs.TRAINING_QUEUE:
                    self.training.enqueue_dependents(job, exclude_job_id=job.id)
                return "canceling"
            raise Conflict(f"job {job.id} has already ended ({jobs.STATUS_MAP.get(status, status)})", field=None)

    def activate(self, version: str, wait_s: float) -> Job:
        """Ask the worker to point current.json at ``version``; wait up to ``wait_s`` for it."""
        with _redis_errors():
            job = self.control.enqueue(
                jobs.ACTIVATE_FUNC,
                kwargs={"version": version},
                job_timeout=jobs.ACTIVATE_TIMEOUT_S,
                result_ttl=jobs.RESULT_TTL_S,
                failure_ttl=jobs.FAILURE_TTL_S,
                meta={"kind": "activate", "version": version},
            )
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if job.get_status(refresh=True) in ("finished", "failed", "stopped", "canceled"):
                    break
                time.sleep(0.05)
            return job

    def fetch(self, job_id: str) -> Job:
        with _redis_errors():
            try:
                return Job.fetch(job_id, connection=self.redis)
            except (NoSuchJobError, ValueError) as exc:  # ValueError: not even a valid RQ job id
                raise NotFound(f"no job {job_id[:100]!r} (unknown, or expired)", field="job_id") from exc

    def describe(self, job: Job) -> dict[str, Any]:
        """The public JSON view of a job."""
        with _redis_errors():
            raw_status = job.get_status(refresh=True)
            if str(getattr(raw_status, "value", raw_status)) == "started":
                # A killed worker leaves its job "started"; RQ's cleanup fails it once
                # its heartbeat has expired (see JOB_MONITORING_INTERVAL_S in tpotserve.jobs).
                StartedJobRegistry(job.origin, connection=self.redis).cleanup()
                raw_status = job.get_status(refresh=True)
            status = jobs.STATUS_MAP.get(str(getattr(raw_status, "value", raw_status)), "queued")
            if status == "failed" and self.redis.exists(jobs.CANCEL_KEY.format(job_id=job.id)):
                status = "canceled"  # the trainer found the cancel marker and stopped
            view: dict[str, Any] = {
                "id": job.id,
                "kind": job.meta.get("kind"),
                "status": status,
                "enqueued_at": _iso(job.enqueued_at),
                "started_at": _iso(job.started_at),
                "ended_at": _iso(job.ended_at),
                "request": job.meta.get("payload") or _without_none({"version": job.meta.get("version")}),
                "progress": job.meta.get("progress"),
                "result": None,
                "error": None,
            }
            if status == "finished":
                view["result"] = job.return_value()
            elif status == "failed":
                view["error"] = job.meta.get("error") or _last_line(job)
            return view


def _status(job: Job) -> str:
    raw = job.get_status(refresh=False)
    return str(getattr(raw, "value", raw))


def _last_line(job: Job) -> str:
    """A failed job's reason as a person reads it."""
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or ""
    if "AbandonedJobError" in text:
        return (
            "the worker running this job stopped unexpectedly (killed or crashed); "
            "the served model is unchanged"
        )
    if "JobTimeoutException" in text:
        return f"the job ran past its timeout of {job.timeout} s and was stopped; the served model is unchanged"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "the job failed without a recorded reason"


def _without_none(data: dict[str, Any]) -> dict[str, Any] | None:
    cleaned = {k: v for k, v in data.items() if v is not None}
    return cleaned or None


def _iso(value: Any) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None
