"""The scheduler's decisions over a real redis-server, a real model store and the real API
(its feedback and live counts): when a schedule is due, when each trigger fires, that a
second scheduler enqueues nothing twice, and that the spacing holds.

The trainings it enqueues are real RQ jobs on the real queue (no worker runs them here;
tests/integration/test_automation.py runs them)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from rq import Queue
from rq.job import Job

from tpotserve import policy as policies
from tpotserve.errors import InvalidInput
from tpotserve.policy import Policy, Schedule, last_due, next_due, parse_policy
from tpotserve.store import POLICY_NAME, ModelStore
from tpotserve_api.app import create_app
from tpotserve_trainer.scheduler import Scheduler, job_id

from tests.unit.test_api import FEATURES, SIGNING_KEY, iris, model, settings_for  # noqa: F401 - fixtures
from tests.unit.test_monitoring import _publish, redis, redis_url  # noqa: F401 - fixtures

NOW = datetime(2026, 12, 7, 12, 0, 30, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def store(tmp_path: Path, iris, model) -> ModelStore:
    X, y = iris
    store = ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())
    _publish(store, "v1", model, X, y, holdout_score=0.95)
    return store


@pytest.fixture
def settings(store, redis_url):  # noqa: F811
    return settings_for(store, redis_url=redis_url, drift_min_rows=50, scheduler_interval_s=1.0)


def _set(store: ModelStore, policy: dict, set_at: float = NOW - 3600) -> None:
    checked = Policy.model_validate(policy).model_dump(mode="json")
    store.write_json(POLICY_NAME, {"policy": checked, "set_at": "then", "set_at_epoch": set_at, "by": "test"})


def _training_jobs(redis_client) -> list[Job]:
    return Queue("training", connection=redis_client).get_jobs()


# --- the policy and its due times ----------------------------------------------------
def test_a_policy_is_checked_field_by_field(settings) -> None:
    assert parse_policy({}, settings, "iris").schedule is None
    for bad, field in (({"schedule": {"cron": "61 * * * *"}}, "schedule"),
                       ({"schedule": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}}, "schedule"),
                       ({"schedule": {"every_s": 5}}, "schedule.every_s"),
                       ({"triggers": {"feedback": {}}}, "triggers.feedback.rows"),
                       ({"budget": {"generations": 10_000}}, "generations"),
                       ({"min_spacing_s": -1}, "min_spacing_s"),
                       ([], None)):
        with pytest.raises(InvalidInput) as caught:
            parse_policy(bad, settings, "iris")
        assert caught.value.field == field, (bad, caught.value.field, caught.value.message)


def test_due_times_of_an_interval_and_of_a_cron_expression_in_a_time_zone() -> None:
    every = Schedule(every_s=600)
    assert last_due(every, since=NOW - 599, now=NOW) is None  # not yet one interval since it was set
    assert last_due(every, since=NOW - 1300, now=NOW) == NOW - 100  # the second due time, not the first
    assert next_due(every, since=NOW - 1300, now=NOW) == NOW + 500
    daily = Schedule(cron="0 3 * * *")  # 03:00 UTC
    assert last_due(daily, since=NOW - 86400 * 2, now=NOW) == datetime(2026, 12, 7, 3, tzinfo=timezone.utc).timestamp()
    assert last_due(daily, since=NOW - 3600, now=NOW) is None  # set after today's 03:00
    paris = Schedule(cron="0 3 * * *", timezone="Europe/Paris")  # 03:00 in Paris is 02:00 UTC in December
    assert next_due(paris, since=NOW, now=NOW) == datetime(2026, 12, 8, 2, tzinfo=timezone.utc).timestamp()


# --- the schedule ------------------------------------------------------------------
def test_a_due_schedule_enqueues_once_whatever_the_number_of_schedulers(store, settings, redis) -> None:  # noqa: F811
    _set(store, {"schedule": {"every_s": 600}, "budget": {"max_time_mins": 0.5}}, set_at=NOW - 1300)
    first, second = Scheduler(settings, redis), Scheduler(settings, redis)
    (state,) = first.tick(NOW)
    assert state["enqueued"] == [{"job_id": job_id("iris", "schedule", NOW - 100), "trigger": "schedule"}]
    assert second.tick(NOW + 1)[0]["enqueued"] == []  # the other scheduler, a second later
    assert first.tick(NOW + 2)[0]["enqueued"] == []  # the same one again (or restarted)
    (job,) = _training_jobs(redis)
    payload = job.kwargs["payload"]
    assert payload["model"] == "iris" and payload["reason"] == "schedule" and payload["max_time_mins"] == 0.5
    assert payload["trigger"]["kind"] == "schedule" and payload["trigger"]["every_s"] == 600
    assert job.meta["trigger"] == payload["trigger"]
    assert int(redis.hget(policies.FIRED_KEY, "iris|schedule")) == 1
    # The next due time enqueues the next training.
    (later,) = second.tick(NOW + 600)
    assert later["enqueued"] == [{"job_id": job_id("iris", "schedule", NOW + 500), "trigger": "schedule"}]
    assert later["next_due_epoch"] == NOW + 1100


def test_two_schedulers_racing_on_one_due_time_enqueue_it_once(store, settings, redis) -> None:  # noqa: F811
    """Both read the policy and find the same due time before either records it: RQ's unique
    job id lets one enqueue win."""
    _set(store, {"schedule": {"every_s": 600}}, set_at=NOW - 700)
    first, second = Scheduler(settings, redis), Scheduler(settings, redis)
    assert first._enqueue("iris", store, Policy(), {"kind": "schedule"}, job_id("iris", "schedule", NOW)) is not None
    assert second._enqueue("iris", store, Policy(), {"kind": "schedule"}, job_id("iris", "schedule", NOW)) is None
    assert len(_training_jobs(redis)) == 1


def test_a_disabled_policy_does_nothing_and_a_model_without_one_is_left_alone(store, settings, redis) -> None:  # noqa: F811
    scheduler = Scheduler(settings, redis)
    assert scheduler.tick(NOW) == []
    _set(store, {"enabled": False, "schedule": {"every_s": 600}}, set_at=NOW - 1300)
    assert scheduler.tick(NOW)[0]["enqueued"] == [] and _training_jobs(redis) == []


# --- triggers -----------------------------------------------------------------------
def _api(store, redis_url):  # noqa: F811
    return create_app(settings_for(store, redis_url=redis_url, drift_min_rows=50), poll=False)


def _predict(app, rows: np.ndarray) -> list[tuple[str, list]]:
    client = app.test_client()
    answers = []
    for start in range(0, len(rows), 50):
        chunk = rows[start:start + 50]
        response = client.post("/predict", json={"instances": [dict(zip(FEATURES, r)) for r in chunk.tolist()]})
        assert response.status_code == 200, response.get_data(as_text=True)
        answers.append((response.headers["X-Prediction-ID"], response.get_json()["predictions"]))
    app.extensions["tpotserve"].monitor.flush()
    return answers


def test_drift_fires_on_shifted_rows_and_the_spacing_holds_the_next(store, settings, redis, redis_url, iris) -> None:  # noqa: F811
    X, _ = iris
    _set(store, {"triggers": {"drift": {"share": 0.5, "min_rows": 100}}, "min_spacing_s": 3600})
    scheduler = Scheduler(settings, redis)
    app = _api(store, redis_url)
    rng = np.random.default_rng(0)
    _predict(app, X[rng.integers(0, len(X), 200)])
    calm = scheduler.tick(time.time())[0]["triggers"]["drift"]
    assert calm["enough_rows"] and not calm["fired"] and calm["drifted_share"] < 0.5, calm

    redis.delete(*redis.keys("tpotserve:mon:counts:*"))
    _predict(app, X[rng.integers(0, len(X), 200)] + 3.0)
    state = scheduler.tick(time.time())[0]
    assert state["triggers"]["drift"]["fired"], state
    (enqueued,) = state["enqueued"]
    assert enqueued["trigger"] == "drift"
    (job,) = _training_jobs(redis)
    trigger = job.kwargs["payload"]["trigger"]
    assert trigger["kind"] == "drift" and trigger["figures"]["drifted_share"] >= 0.5 and trigger["served_version"] == "v1"

    held = scheduler.tick(time.time() + 1)[0]
    assert held["enqueued"] == [] and held["held_by_spacing"]["fired"] == ["drift"], held
    assert held["last"]["drift"]["job_id"] == enqueued["job_id"]  # what ran last, and why, stays in view
    assert held["last"]["drift"]["trigger"]["figures"]["drifted_share"] >= 0.5
    assert len(_training_jobs(redis)) == 1


def test_feedback_fires_after_n_new_labelled_rows_and_quality_on_a_drop(store, settings, redis, redis_url, iris) -> None:  # noqa: F811
    X, y = iris
    _set(store, {"triggers": {"feedback": {"rows": 100}, "quality": {"margin": 0.1, "min_rows": 50}},
                 "min_spacing_s": 0})
    scheduler = Scheduler(settings, redis)
    app = _api(store, redis_url)
    start = scheduler.tick(time.time())[0]["triggers"]
    assert start["feedback"] == {"fired": False, "new_rows": 0, "threshold": 100, "total": 0}
    assert start["quality"]["rows"] == 0 and not start["quality"]["fired"]

    # 60 answers with the truth: not yet 100 rows; live accuracy as good as the holdout's.
    rows = np.arange(0, 150, 150 // 60)[:60]
    answers = _predict(app, X[rows])
    items = [{"id": f"{pid}:{i}", "label": str(y[rows[offset + i]])}
             for offset, (pid, batch) in zip(range(0, 60, 50), answers) for i in range(len(batch))]
    assert app.test_client().post("/feedback", json=items).get_json()["accepted"] == 60
    state = scheduler.tick(time.time())[0]["triggers"]
    assert state["feedback"]["new_rows"] == 60 and not state["feedback"]["fired"]
    assert state["quality"]["rows"] == 60 and not state["quality"]["fired"], state["quality"]

    # 60 more, all labelled wrong: 120 new rows (fires), and live accuracy falls far below 0.95.
    answers = _predict(app, X[rows])
    wrong = [{"id": f"{pid}:{i}", "label": "setosa" if p != "setosa" else "virginica"}
             for pid, batch in answers for i, p in enumerate(batch)]
    assert app.test_client().post("/feedback", json=wrong).get_json()["accepted"] == 60
    state = scheduler.tick(time.time())
    figures = state[0]["triggers"]
    assert figures["feedback"]["fired"] and figures["feedback"]["new_rows"] == 120
    assert figures["quality"]["fired"] and figures["quality"]["live_score"] < 0.85 - 1e-9, figures["quality"]
    (job,) = _training_jobs(redis)
    assert job.kwargs["payload"]["trigger"]["kind"] == "quality"  # the first that fired; the other listed
    assert job.kwargs["payload"]["trigger"]["also"] == ["feedback"]
    # The feedback count starts again from this training.
    assert scheduler.tick(time.time() + 2)[0]["triggers"]["feedback"]["new_rows"] == 0


def test_the_api_reads_the_policy_and_the_schedulers_view(store, settings, redis, redis_url) -> None:  # noqa: F811
    _set(store, {"schedule": {"cron": "0 3 * * *"}})
    Scheduler(settings, redis).tick(NOW)
    client = _api(store, redis_url).test_client()
    assert client.get("/models/iris/policy").status_code == 401
    body = client.get("/models/iris/policy", headers={"Authorization": "Bearer test-key"}).get_json()
    assert body["policy"]["schedule"]["cron"] == "0 3 * * *"
    assert body["scheduler"]["next_due"] == "2026-12-08T03:00:00Z"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tpotserve_policy_next_due_timestamp_seconds{model="iris"}' in metrics


def test_a_training_the_server_refuses_is_reported_once_not_retried_every_tick(store, settings, redis) -> None:  # noqa: F811
    # r2 is no scorer for a classifier: the training is refused when planned, as POST /retrain would be.
    _set(store, {"schedule": {"every_s": 600}, "budget": {"scoring": "r2"}}, set_at=NOW - 700)
    scheduler = Scheduler(settings, redis)
    (state,) = scheduler.tick(NOW)
    assert state["enqueued"] == [] and "not enqueued" in state["error"] and "r2" in state["error"], state
    assert "error" not in scheduler.tick(NOW + 1)[0]  # the due time is done with
    assert _training_jobs(redis) == []


# --- shadow candidates: promotion on live evidence -------------------------------------
@pytest.fixture
def shadowed(tmp_path, redis_url, redis, monkeypatch):  # noqa: F811
    """A store serving a most-frequent-class dummy with a logistic regression stored beside it;
    the control jobs (run here by hand, as the control worker would) see the same volume."""
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    names = np.array(load_iris().target_names)[y]
    store = ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())
    _publish(store, "v_good", LogisticRegression(max_iter=1000).fit(X, names), X, names, holdout_score=0.97)
    _publish(store, "v_dummy", DummyClassifier(strategy="most_frequent").fit(X, names), X, names, holdout_score=0.33)
    for key, val in {"MODEL_DIR": str(store.root.parents[1]), "MODEL_SIGNING_KEY": SIGNING_KEY,
                     "REDIS_URL": redis_url}.items():
        monkeypatch.setenv(key, val)
    settings = settings_for(store, redis_url=redis_url, scheduler_interval_s=1.0)
    return store, settings, X, names


def _answer_and_label(settings, X, names) -> None:
    """An API worker (started now: it serves the current version) answers every row, its
    shadow runner too, and the truth comes back as feedback."""
    from tests.unit.test_shadow import _predict as predict_rows

    app = create_app(settings, poll=False)
    client = app.test_client()
    runner = app.extensions["tpotserve"].shadows
    predict_rows(client, X[:1], batch=1)  # the worker learns of the shadow at its next look
    runner.drain()
    answers = predict_rows(client, X, batch=50)
    assert runner.drain() and app.extensions["tpotserve"].monitor.flush()
    items = [{"id": f"{pid}:{i}", "label": str(names[start + i])}
             for (pid, batch), start in zip(answers, range(0, len(X), 50)) for i in range(len(batch))]
    assert client.post("/feedback", json=items).get_json()["accepted"] == len(X)


def test_a_better_shadow_is_promoted_by_a_normal_activation_that_one_call_rolls_back(shadowed, redis) -> None:  # noqa: F811
    from tpotserve_trainer import jobs as control

    store, settings, X, names = shadowed  # v_dummy served
    control.set_shadow("v_good", model="iris", share=1.0, reason="test", by="unit")
    _set(store, {"promote": {"min_rows": 100, "margin": 0.05, "p_value": 0.01}})
    _answer_and_label(settings, X, names)

    (state,) = Scheduler(settings, redis).tick(time.time())
    assert state["shadow"]["decision"] == "promote", state["shadow"]
    (job,) = Queue("control", connection=redis).get_jobs()
    assert job.func_name == "tpotserve_trainer.jobs.promote_shadow" and job.kwargs["version"] == "v_good"
    assert Scheduler(settings, redis).tick(time.time() + 1)[0]["enqueued"] == []  # once, with two schedulers
    result = control.promote_shadow(**job.kwargs)
    assert result["version"] == "v_good" and result["previous"] == "v_dummy"
    assert store.read_pointer().version == "v_good" and store.read_json("shadow.json") is None
    (logged, *_) = store.activations()
    assert logged["reason"] == "promotion" and logged["by"] == "scheduler" and logged["from"] == "v_dummy"
    assert logged["details"]["decision"] == "promote" and logged["details"]["p_value"] < 0.01
    assert logged["details"]["rows"] == len(X) and logged["details"]["effect"] > 0.05
    # Rolled back with one call: the activation of the previous version.
    control.activate(result["previous"], model="iris")
    assert store.read_pointer().version == "v_dummy" and store.activations()[0]["reason"] == "activate"


def test_a_worse_shadow_is_never_promoted_and_is_dropped_after_its_time(shadowed, redis) -> None:  # noqa: F811
    from tpotserve_trainer import jobs as control

    store, settings, X, names = shadowed
    control.activate("v_good", model="iris")
    control.set_shadow("v_dummy", model="iris", share=1.0, reason="test", by="unit")
    _set(store, {"promote": {"min_rows": 100, "max_age_s": 600}})
    _answer_and_label(settings, X, names)

    (state,) = Scheduler(settings, redis).tick(time.time())
    assert state["shadow"]["decision"] == "wait" and Queue("control", connection=redis).get_jobs() == []
    (later,) = Scheduler(settings, redis).tick(time.time() + 601)
    assert later["shadow"]["decision"] == "drop", later["shadow"]
    (job,) = Queue("control", connection=redis).get_jobs()
    assert job.func_name == "tpotserve_trainer.jobs.clear_shadow"
    control.clear_shadow(**job.kwargs)
    assert store.read_pointer().version == "v_good" and store.read_json("shadow.json") is None
