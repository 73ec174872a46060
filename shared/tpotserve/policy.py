"""A model's retraining policy: when it trains on its own, on what, with which budget, and
what happens to the candidates (shadow, promotion on live evidence).

Stored with the model (``policy.json`` beside ``current.json``; written by the control
worker, like every write to the model volume) and read by the scheduler on each tick, so
a PUT takes effect at the next tick without restarting anything. Validated here, once,
for the API (a 422 before anything is written) and for the control worker that writes it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .schema import RetrainRequest, check_caps, validated
from .settings import Settings
from .store import POLICY_NAME

KEY_PREFIX = "tpotserve:sched:"
FIRED_KEY = KEY_PREFIX + "fired"
"""hash ``<model>|<trigger>`` -> trainings the scheduler enqueued (the metric)."""
TICK_KEY = KEY_PREFIX + "tick"
"""When a scheduler last evaluated the policies (epoch seconds)."""
STATE_TTL_S = 7 * 24 * 3600


def state_key(model: str) -> str:
    """JSON: the scheduler's last evaluation of the model's policy (GET .../policy shows it)."""
    return f"{KEY_PREFIX}state:{model}"


def last_key(model: str) -> str:
    """hash trigger kind -> JSON of the last training the scheduler enqueued for it (job id, when, why)."""
    return f"{KEY_PREFIX}last:{model}"


def spacing_key(model: str) -> str:
    """Set (NX, with the policy's min_spacing_s as expiry) when a triggered training is enqueued:
    while it exists no other trigger fires, whichever scheduler asks."""
    return f"{KEY_PREFIX}spacing:{model}"


def feedback_mark_key(model: str) -> str:
    """The model's feedback count (``live.feedback_total_key``) when its last automatic training ran."""
    return f"{KEY_PREFIX}feedback-mark:{model}"
TRIGGERS = ("schedule", "drift", "quality", "feedback")
"""Why an automatic training ran (the job's and the version's ``trigger.kind``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Schedule(_Strict):
    """Either a cron expression (in ``timezone``, UTC by default) or a fixed interval."""

    cron: str | None = None
    """Five fields, e.g. ``0 3 * * *`` (03:00 every day)."""
    timezone: str = "UTC"
    every_s: int | None = Field(default=None, ge=10)
    """An interval in seconds, counted from when the policy was set."""

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError('give either "cron" or "every_s"')
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r} (an IANA name, e.g. Europe/Paris)") from None
        if self.cron is not None and (len(self.cron.split()) != 5 or not croniter.is_valid(self.cron)):
            raise ValueError(f"{self.cron!r} is not a five-field cron expression (minute hour day month weekday)")
        return self


class DriftTrigger(_Strict):
    """Train when at least ``share`` of the features drifted (tpotserve.drift's verdicts), on
    at least ``min_rows`` live rows of the served version in the last ``window_s``."""

    share: float = Field(default=0.3, gt=0, le=1)
    min_rows: int | None = Field(default=None, ge=1)
    """None: DRIFT_MIN_ROWS."""
    window_s: int | None = Field(default=None, ge=1)
    """None: DRIFT_WINDOW_S."""


class QualityTrigger(_Strict):
    """Train when the served version's live score (from feedback in the last ``window_s``) is
    below its holdout score by more than ``margin``, on at least ``min_rows`` labelled rows.
    The live score is the holdout's metric (accuracy; r2, or the error for neg_* scorers)."""

    margin: float = Field(default=0.05, ge=0)
    min_rows: int = Field(default=100, ge=1)
    window_s: int | None = Field(default=None, ge=1)


class FeedbackTrigger(_Strict):
    """Train after ``rows`` new labelled feedback rows since the model's last automatic training."""

    rows: int = Field(ge=1)


class Triggers(_Strict):
    drift: DriftTrigger | None = None
    quality: QualityTrigger | None = None
    feedback: FeedbackTrigger | None = None


class TrainingData(_Strict):
    """The model's data set, optionally extended with its kept labelled live rows (feedback
    with FEEDBACK_KEEP_ROWS on): a new data set version, recorded in the version's meta."""

    feedback_rows: bool = False
    max_feedback_rows: int = Field(default=10_000, ge=1, le=1_000_000)


class Budget(_Strict):
    """The search's budget; omitted fields take the server's defaults, all within its caps."""

    max_time_mins: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    generations: int | None = Field(default=None, ge=1)
    population_size: int | None = Field(default=None, ge=2)
    cv: int | None = Field(default=None, ge=2)
    scoring: str | None = None
    baselines: bool = True
    random_state: int | None = Field(default=None, ge=0, le=2**32 - 1)


class ShadowOptions(_Strict):
    held_back: bool = False
    """Put every candidate the gate held back in shadow (replacing the current shadow)."""
    share: float = Field(default=0.05, gt=0, le=1)
    """The sampled share of served rows the shadow answers too (SHADOW_SHARE when not set here)."""


class Promotion(_Strict):
    """Opt-in: the shadow replaces the served version when, on at least ``min_rows`` labelled rows
    both answered, it beats it by more than ``margin`` (accuracy points, or the relative drop in
    squared error) with a one-sided paired test at ``p_value`` (tpotserve.shadow); a shadow
    not promoted after ``max_age_s`` is dropped."""

    min_rows: int = Field(default=100, ge=10)
    margin: float = Field(default=0.0, ge=0)
    p_value: float = Field(default=0.05, gt=0, lt=1)
    max_age_s: int = Field(default=7 * 24 * 3600, ge=60)


class Policy(_Strict):
    enabled: bool = True
    schedule: Schedule | None = None
    triggers: Triggers = Field(default_factory=Triggers)
    data: TrainingData = Field(default_factory=TrainingData)
    budget: Budget = Field(default_factory=Budget)
    min_spacing_s: int = Field(default=3600, ge=0)
    """At least this long between two triggered (drift, quality, feedback) trainings of the model."""
    shadow: ShadowOptions = Field(default_factory=ShadowOptions)
    promote: Promotion | None = None


def read_policy(store: Any) -> Policy | None:
    """A model's stored policy (``policy.json``: ``{"policy": ..., "set_at": ...}``, written by the
    control worker); None without one, or with one that no longer validates."""
    document = store.read_json(POLICY_NAME)
    if not document or not isinstance(document.get("policy"), dict):
        return None
    try:
        return Policy.model_validate(document["policy"])
    except ValidationError:
        return None


def parse_policy(body: Any, settings: Settings, model: str) -> Policy:
    """A PUT body as a Policy, its budget checked against the server's caps (InvalidInput: 422)."""
    policy = validated(Policy, body, not_object="send the policy as a JSON object (docs/automation.md)",
                       prefix="policy")
    check_caps(RetrainRequest(model=model, **policy.budget.model_dump(exclude={"baselines", "random_state",
                                                                                "scoring"})), settings)
    return policy


# --- when the schedule is due ---------------------------------------------------------
def last_due(schedule: Schedule, since: float, now: float) -> float | None:
    """The latest due time in (since, now] (epoch seconds), or None when none fell in it.
    ``since``: when the policy was set (an interval counts from it)."""
    if schedule.every_s is not None:
        if now <= since:
            return None
        steps = math.floor((now - since) / schedule.every_s)
        return since + steps * schedule.every_s if steps >= 1 else None
    zone = ZoneInfo(schedule.timezone)
    due = croniter(schedule.cron, datetime.fromtimestamp(now, zone)).get_prev(datetime).timestamp()
    return due if since < due <= now else None


def next_due(schedule: Schedule, since: float, now: float) -> float:
    """The first due time after ``now``."""
    if schedule.every_s is not None:
        steps = math.floor(max(now - since, 0) / schedule.every_s) + 1
        return since + steps * schedule.every_s
    zone = ZoneInfo(schedule.timezone)
    return croniter(schedule.cron, datetime.fromtimestamp(now, zone)).get_next(datetime).timestamp()
