"""A model version's life: retrain on the RQ worker, publish, serve, roll back (swaps under load and
bad artifacts: test_faults.py, which runs each scenario once for the whole suite)."""

from __future__ import annotations

import time

import pytest

from tpotserve import jobs

from .conftest import API_KEY, LiveStack

SWAP_DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def retrained(stack: LiveStack) -> dict:
    """One real retrain through nginx; later tests use its version as the second one."""
    started = time.monotonic()
    # promote "always": this test is about publishing, not the gate (tested in test_retraining.py).
    response = stack.post(
        "/retrain", json={"dataset": "iris", "generations": 2, "cv": 3, "promote": "always"}, headers=stack.admin()
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["Location"] == f"/jobs/{body['job_id']}"
    first = stack.get(response.headers["Location"]).json()
    assert first["status"] in ("queued", "started", "finished")
    job = stack.wait_job(body["job_id"])
    seen_finished = time.monotonic()
    assert job["status"] == "finished", job
    takeover_s = stack.wait_all_workers_serve(job["result"]["version"], timeout_s=10)
    return {
        "job": job,
        "takeover_s": takeover_s,
        "elapsed_s": seen_finished - started,
    }


def test_retrain_publishes_a_new_version_every_worker_serves(stack: LiveStack, retrained: dict) -> None:
    job = retrained["job"]
    result = job["result"]
    assert result["version"] != stack.bootstrap_version
    assert 0.0 <= result["cv_score"] <= 1.0
    assert job["request"]["generations"] == 2
    # Every API worker serves it within 2 s of our seeing the job finished.
    assert retrained["takeover_s"] <= SWAP_DEADLINE_S, retrained
    response = stack.predict_book()
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == result["version"]


def test_models_lists_every_version_with_its_metadata(stack: LiveStack, retrained: dict) -> None:
    body = stack.get("/models").json()
    versions = {meta["version"]: meta for meta in body["versions"]}
    new = retrained["job"]["result"]["version"]
    assert {stack.bootstrap_version, new} <= set(versions)
    assert body["current"] == new
    assert versions[new]["current"] is True
    assert versions[stack.bootstrap_version]["current"] is False
    meta = versions[new]
    for key in ("created_at", "task", "features", "classes", "target", "cv_score", "tpot_settings",
                "pipeline", "sha256", "library_versions"):
        assert key in meta, key
    # The artifact on the volume is a plain joblib file a user can copy out and use.
    import joblib
    import numpy as np

    model = joblib.load(stack.store_dir / "versions" / new / "model.joblib")
    assert set(model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))) <= {"setosa", "versicolor", "virginica"}


def test_activate_rolls_back_on_every_worker(stack: LiveStack, retrained: dict) -> None:
    old, new = stack.bootstrap_version, retrained["job"]["result"]["version"]
    response = stack.post(f"/models/{old}/activate", headers=stack.admin())
    assert response.status_code == 200, response.text
    assert response.json()["activated"] is True
    assert stack.wait_all_workers_serve(old, timeout_s=10) <= SWAP_DEADLINE_S
    response = stack.post(f"/models/{new}/activate", headers=stack.admin())
    assert response.status_code == 200, response.text
    assert stack.wait_all_workers_serve(new, timeout_s=10) <= SWAP_DEADLINE_S


def _queued(stack: LiveStack) -> int:
    return stack.redis().llen(f"rq:queue:{jobs.TRAINING_QUEUE}")


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong-key"}, 401), ({"Authorization": API_KEY}, 401)],
    ids=["no key", "wrong key", "no scheme"],
)
def test_retrain_without_the_key_is_refused_and_enqueues_nothing(
    stack: LiveStack, headers: dict, status: int
) -> None:
    before = _queued(stack)
    response = stack.post("/retrain", json={"dataset": "iris"}, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == "unauthorized"
    assert _queued(stack) == before
    assert "wrong-key" not in stack.native.log_text("api")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset": "no-such-data"}, "dataset"),
        ({"generations": 0}, "generations"),
        ({"generations": 10_000}, "generations"),
        ({"max_time_mins": -1}, "max_time_mins"),
        ({"cv": "5"}, "cv"),
        ({"scoring": "r2"}, "scoring"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_retrain_request_is_422_and_enqueues_nothing(stack: LiveStack, body: dict, field: str) -> None:
    before = _queued(stack)
    response = stack.post("/retrain", json=body, headers=stack.admin())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert _queued(stack) == before


def test_unknown_job_and_version_are_404(stack: LiveStack) -> None:
    assert stack.get("/jobs/no-such-job").status_code == 404
    response = stack.post("/models/no-such-version/activate", headers=stack.admin())
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "version"
