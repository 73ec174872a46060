"""A model version's life: retrain on the RQ worker, publish, serve, roll back, refuse bad ones."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter

import pytest

from tpotserve import jobs

from .conftest import API_KEY, LiveStack, wait_for

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

    model = joblib.load(stack.model_dir / "versions" / new / "model.joblib")
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


def test_no_failed_request_while_versions_swap_under_load(stack: LiveStack, retrained: dict) -> None:
    versions = [stack.bootstrap_version, retrained["job"]["result"]["version"]]
    stop = threading.Event()
    statuses: Counter = Counter()
    served: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        import requests

        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(
                    stack.url + "/predict",
                    json={"instances": [{"SepalLength": 5.9, "SepalWidth": 3.0, "PetalLength": 4.2, "PetalWidth": 1.5}]},
                    timeout=30,
                )
                with lock:
                    statuses[response.status_code] += 1
                    served[response.headers.get("X-Model-Version")] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    swaps = 0
    try:
        for i in range(8):
            target = versions[i % 2]
            response = stack.post(f"/models/{target}/activate", headers=stack.admin())
            assert response.status_code == 200, response.text
            swaps += 1
            time.sleep(1.0)  # the load keeps running between swaps; this paces the swaps
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    final = versions[(swaps - 1) % 2]
    assert sum(statuses.values()) > 100, statuses
    assert set(statuses) == {200}, statuses
    assert set(served) <= set(versions), served
    assert len(served) == 2, served  # both versions were really served
    assert stack.wait_all_workers_serve(final, timeout_s=10) <= SWAP_DEADLINE_S


def test_bad_artifact_is_refused_and_the_old_model_keeps_serving(stack: LiveStack, retrained: dict) -> None:
    good = stack.predict_book().headers["X-Model-Version"]
    # An operator copies a version in by hand and points current.json at it,
    # but the bytes do not match the hash the pointer promises.
    bad = "20000101T000000Z-badbad"
    source = stack.model_dir / "versions" / good
    target = stack.model_dir / "versions" / bad
    shutil.copytree(source, target)
    meta = json.loads((target / "meta.json").read_text())
    meta["version"] = bad
    (target / "meta.json").write_text(json.dumps(meta))
    with open(target / "model.joblib", "ab") as handle:
        handle.write(b"tampered")
    pointer = stack.model_dir / "current.json"
    original = pointer.read_text()
    tmp = stack.model_dir / ".tmp-by-hand"
    tmp.write_text(json.dumps({"version": bad, "sha256": meta["sha256"]}))
    os.replace(tmp, pointer)
    try:
        def refused_everywhere() -> bool:
            states = [stack.get("/readyz").json() for _ in range(20)]
            return all(
                (s["last_load_error"] or {}).get("version") == bad and s["model_version"] == good for s in states
            )

        wait_for(refused_everywhere, timeout_s=10, what="every worker refusing the bad artifact")
        ready = stack.get("/readyz")
        assert ready.status_code == 200  # still serving the last good model
        assert "sha256" in ready.json()["last_load_error"]["message"]
        response = stack.predict_book()
        assert response.status_code == 200
        assert response.headers["X-Model-Version"] == good
        assert "refused model" in stack.native.log_text("api")
    finally:
        tmp.write_text(original)
        os.replace(tmp, pointer)
        shutil.rmtree(target)
    wait_for(lambda: stack.get("/readyz").json()["last_load_error"] is None, timeout_s=10, what="error cleared")


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
