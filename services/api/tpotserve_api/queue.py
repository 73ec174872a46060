"""The API's side of the queue: enqueue by name, read job state.

Every Redis failure becomes :class:`QueueUnavailable` (503 + Retry-After), so
a dead Redis costs a write endpoint at most the socket timeout and never
touches /predict.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from redis.exceptions import RedisError
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.results import Result
from rq.registry import CanceledJobRegistry, StartedJobRegistry

from tpotserve import jobs
from tpotserve.clock import utc_iso
from tpotserve.errors import Conflict, NotFound, QueueUnavailable
from tpotserve.schema import TrainingPayload
from tpotserve.settings import Settings


@contextmanager
def redis_errors(action: str | None = None) -> Iterator[None]:
    """A Redis failure inside as :class:`QueueUnavailable`, naming ``action`` (else the job queue)."""
    try:
        yield
    except RedisError as exc:
        what = f"{action} needs Redis, which is unavailable" if action else "the job queue (Redis) is unavailable"
        raise QueueUnavailable(f"{what}: {type(exc).__name__}") from exc


class JobQueue:
    """Enqueue training and control jobs; describe jobs as JSON."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = jobs.redis_client(settings)
        self.training = Queue(jobs.TRAINING_QUEUE, connection=self.redis)
        self.control = Queue(jobs.CONTROL_QUEUE, connection=self.redis)

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except RedisError:
            return False

    def enqueue_retrain(self, payload: TrainingPayload, *, queue_behind: bool = False) -> Job:
        """Enqueue a training; Conflict (409) while another of the same model is queued or
        running, unless asked to queue. A training of another model queues behind."""
        model = payload.model or self.settings.model_name
        with redis_errors():
            # A short lock makes "check, then enqueue" one step across API workers.
            with self.redis.lock(jobs.ENQUEUE_LOCK, timeout=10, blocking_timeout=5):
                active = self.active_training(model)
                if active is not None and not queue_behind:
                    what = "a training" if model == self.settings.model_name else f"a training of {model!r}"
                    raise Conflict(
                        f"{what} is already {active['status']}: job {active['id']}; "
                        "wait for it, cancel it, or send \"queue\": true",
                        field=None,
                        job_id=active["id"],
                        location=f"/jobs/{active['id']}",
                    )
                return self.training.enqueue(jobs.RETRAIN_FUNC, **jobs.training_enqueue_args(
                    payload, self.settings.job_timeout_margin_s, kind=payload.reason, model=model))

    def active_training(self, model: str | None = None) -> dict[str, str] | None:
        """The running (or else the oldest queued) training job of ``model`` (None: of any)."""
        with redis_errors():
            registry = StartedJobRegistry(queue=self.training)
            registry.cleanup()  # a dead worker's job is failed, not running
            for status, ids in (("running", registry.get_job_ids()), ("queued", self.training.get_job_ids())):
                for job_id in ids:
                    if model is None or self._trains(job_id) == model:
                        return {"id": job_id, "status": status}
            return None

    def _trains(self, job_id: str) -> str:
        """The model a training job trains (jobs from before named models: the default)."""
        try:
            name = Job.fetch(job_id, connection=self.redis).meta.get("model")
        except NoSuchJobError:  # expired meanwhile
            name = None
        return name or self.settings.model_name

    def cancel(self, job: Job) -> str:
        """Cancel a queued job or stop a running one; returns the status to report."""
        with redis_errors():
            status = jobs.rq_status(job)
            if status in ("queued", "deferred", "scheduled"):
                # RQ lists it in its canceled registry, which the trainer checks when it
                # starts: a worker may have dequeued it a moment ago, while RQ still said queued.
                job.cancel()
                return "canceled"
            if status == "started":
                # The worker kills the work-horse's process group (TPOT's Dask processes too);
                # RQ then records the job as stopped, which /jobs reports as canceled. The next
                # training in the queue starts as soon as the worker is free.
                send_stop_job_command(self.redis, job.id)
                return "canceling"
            raise Conflict(f"job {job.id} has already ended ({jobs.STATUS_MAP.get(status, status)})", field=None)

    def activate(self, version: str, wait_s: float, model: str | None = None, replace_contract: bool = False) -> Job:
        """Ask the control worker to point ``model``'s current.json (None: the default model's)
        at ``version``; wait up to ``wait_s``
        for it, blocked in Redis on the job's result stream (no polling): it takes milliseconds
        (the control worker runs it without a fork), and ``wait_s`` only bounds how long a
        busy or dead control worker can hold this API worker. ``replace_contract``: the
        control worker may change the model's contract (tpotserve.contract)."""
        named = {"model": model} if model is not None else {}
        override = {"replace_contract": True} if replace_contract else {}
        return self.control_job(jobs.ACTIVATE_FUNC, {"version": version, **named, **override}, wait_s,
                                meta={"kind": "activate", "version": version, **named})

    def set_policy(self, model: str, policy: dict[str, Any] | None, wait_s: float) -> Job:
        """Ask the control worker to write (None: remove) ``model``'s policy.json."""
        return self.control_job(jobs.SET_POLICY_FUNC, {"model": model, "policy": policy}, wait_s,
                                meta={"kind": "set_policy", "model": model})

    def control_job(self, func: str, kwargs: dict[str, Any], wait_s: float, meta: dict[str, Any]) -> Job:
        """Enqueue a quick store write on the control queue (activate, a policy, a shadow) and
        wait up to ``wait_s`` for it."""
        with redis_errors():
            job = self.control.enqueue(func, **jobs.control_enqueue_args(kwargs, meta))
            # Below the connection's socket timeout, or the blocked read would raise instead.
            block_ms = int(1000 * min(wait_s, 0.8 * self.settings.redis_timeout_s))
            if block_ms > 0:
                # RQ writes the result (success or failure) in the step that ends the job.
                self.redis.xread({Result.get_key(job.id): "0-0"}, count=1, block=block_ms)
            return job

    def fetch(self, job_id: str) -> Job:
        with redis_errors():
            try:
                return Job.fetch(job_id, connection=self.redis)
            except (NoSuchJobError, ValueError) as exc:  # ValueError: not even a valid RQ job id
                raise NotFound(f"no job {job_id[:100]!r} (unknown, or expired)", field="job_id") from exc

    def describe(self, job: Job) -> dict[str, Any]:
        """The public JSON view of a job."""
        with redis_errors():
            raw_status = jobs.rq_status(job)
            if raw_status == "started":
                # A killed worker leaves its job "started"; RQ's cleanup fails it once
                # its heartbeat has expired (--job-monitoring-interval in services/trainer/entrypoint.sh).
                StartedJobRegistry(job.origin, connection=self.redis).cleanup()
                raw_status = jobs.rq_status(job)
            status = jobs.STATUS_MAP.get(raw_status, "queued")
            if status == "failed" and job.id in CanceledJobRegistry(job.origin, connection=self.redis):
                status = "canceled"  # canceled as a worker took it: the trainer stopped at once
            view: dict[str, Any] = {
                "id": job.id,
                "kind": job.meta.get("kind"),
                "status": status,
                "enqueued_at": _iso(job.enqueued_at),
                "started_at": _iso(job.started_at),
                "ended_at": _iso(job.ended_at),
                "request": job.meta.get("payload")
                or _without_none({"model": job.meta.get("model"), "version": job.meta.get("version")}),
                "progress": job.meta.get("progress"),
                "trigger": job.meta.get("trigger"),
                "result": None,
                "error": None,
            }
            if status == "finished":
                view["result"] = job.return_value()
            elif status == "failed":
                view["error"] = job.meta.get("error") or _last_line(job)
            return view


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
    return utc_iso(value) if value is not None else None
