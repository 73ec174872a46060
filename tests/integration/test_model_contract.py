"""A model's contract holds on the real stack (issue 26): a retrain of the default model on
another data set without "model" is a 409 naming what would change and enqueues nothing; with
"replace_contract" it trains and publishes; activating across contracts is a 409, with the
override a 200 (over HTTP and through `tpotserve rollback` / `activate --replace-contract`); a same-contract retrain and a data set with a new class are allowed (the new
class said in the job's result). Under prediction load, the default model's answers keep
their shape through every refused attempt.

The trainings are tiny and each one is used for several checks; the module leaves an iris
version of the bootstrap's contract current.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import requests

from tpotserve import jobs
from tpotserve.datasets import iris_frame

from .conftest import BOOK_REQUEST, LiveStack, wait_for
from .test_cli import tpotserve

TINY = {"max_time_mins": 0.3, "generations": 1, "population_size": 4, "cv": 3}
IRIS_KEYS = {"In_SepalLength", "In_SepalWidth", "In_PetalLength", "In_PetalWidth", "Prediction", "Probability",
             "probabilities", "model_version"}
IRIS_CLASSES = {"setosa", "versicolor", "virginica"}


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _upload(stack: LiveStack, frame: pd.DataFrame) -> str:
    return stack.upload_csv(_csv(frame))["id"]


def _retrain(stack: LiveStack, **body: object) -> requests.Response:
    return stack.post("/retrain", json={**TINY, **body}, headers=stack.admin())


def _queued(stack: LiveStack) -> int:
    return stack.redis().llen(f"rq:queue:{jobs.TRAINING_QUEUE}")


def _no_training(stack: LiveStack) -> bool:
    """Nothing queued or running on the training queue (a later test would 409 on it)."""
    redis = stack.redis()
    return _queued(stack) == 0 and redis.zcard(f"rq:wip:{jobs.TRAINING_QUEUE}") == 0


def _served(stack: LiveStack) -> str:
    return stack.get("/readyz").json()["model_version"]


def _house_prices() -> pd.DataFrame:
    """A regression data set with other features and another target than iris."""
    rng = np.random.default_rng(3)
    rooms, area = rng.integers(1, 7, 80), rng.uniform(30, 200, 80)
    return pd.DataFrame({"rooms": rooms, "area": area.round(2),
                         "price": (40 * rooms + 2.5 * area + rng.normal(0, 5, 80)).round(2)})


def _iris_with_a_new_class() -> pd.DataFrame:
    """Iris plus a fourth species: the same features, target and task; one class more."""
    frame = iris_frame()
    rng = np.random.default_rng(5)
    extra = pd.DataFrame({column: rng.uniform(8.0, 9.0, 30).round(2) for column in frame.columns if column != "species"})
    extra["species"] = "hybrida"
    return pd.concat([frame, extra], ignore_index=True)


class BookLoad:
    """The book's request in a loop, recording the shape of every answer of the default model."""

    def __init__(self, stack: LiveStack) -> None:
        self.stack, self.stop_event = stack, threading.Event()
        self.shapes: list[tuple[int, frozenset]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop_event.is_set():
            response = session.post(self.stack.url + "/predict", json=BOOK_REQUEST, timeout=30)
            body = response.json()
            keys = frozenset(body) | frozenset(f"class:{c}" for c in body.get("probabilities") or {})
            self.shapes.append((response.status_code, keys))

    def __enter__(self) -> BookLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def iris_version(stack: LiveStack):
    """The iris version served when the module starts; served again when it ends."""
    wait_for(lambda: _no_training(stack), 240, interval_s=0.5, what="no training queued or running")
    version = _served(stack)
    assert stack.get("/models/current").json()["contract"]["target"] == "species"
    yield version
    response = stack.post(f"/models/{version}/activate", json={"replace_contract": True}, headers=stack.admin())
    assert response.status_code == 200, response.text
    stack.wait_all_workers_serve(version, timeout_s=15)


def test_a_retrain_of_the_default_model_on_other_data_is_refused_then_replaced_deliberately(
    stack: LiveStack, iris_version: str
) -> None:
    houses = _upload(stack, _house_prices())
    queued_before = _queued(stack)
    with BookLoad(stack) as load:
        refused = _retrain(stack, dataset=houses, target="price", task="regression")
        wait_for(lambda: len(load.shapes) >= 20, 15, what="prediction load")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "contract_changed"
    change = error["contract_change"]
    assert set(change["features_added"]) == {"rooms", "area"}
    assert set(change["features_missing"]) == set(BOOK_REQUEST)
    assert change["target"] == {"from": "species", "to": "price"}
    assert change["task"] == {"from": "classification", "to": "regression"}
    assert error["current_version"] == iris_version
    assert "replace_contract" in error["message"] and "new model" in error["message"]
    assert _queued(stack) == queued_before  # nothing enqueued
    # Every answer of the default model kept the iris shape through the refusal.
    assert {status for status, _ in load.shapes} == {200}, set(load.shapes)
    assert {keys for _, keys in load.shapes} == {frozenset(IRIS_KEYS) | {f"class:{c}" for c in IRIS_CLASSES}}

    # The override: trains and publishes a regressor as the default model.
    replaced = _retrain(stack, dataset=houses, target="price", task="regression", replace_contract=True,
                        promote="always")
    assert replaced.status_code == 202, replaced.text
    assert replaced.json()["request"]["replace_contract"] is True
    job = stack.wait_job(replaced.json()["job_id"], timeout_s=180)
    assert job["status"] == "finished", job
    result = job["result"]
    assert result["published"] is True
    assert result["contract"]["replaced"] is True
    assert result["contract"]["change"]["target"] == {"from": "species", "to": "price"}
    houses_version = result["version"]
    stack.wait_all_workers_serve(houses_version, timeout_s=15)
    assert stack.predict_book().status_code == 422  # what the override was for
    registry = stack.get("/registry").json()["models"][0]
    assert registry["name"] == "iris" and registry["contract"]["target"] == "price"
    assert registry["mixed_contracts"] is True and iris_version in registry["other_contract_versions"]

    # Rolling back across the boundary: a 409 naming the difference, the regressor keeps serving...
    with BookLoad(stack) as load:
        back = stack.post(f"/models/{iris_version}/activate", headers=stack.admin())
        wait_for(lambda: len(load.shapes) >= 10, 15, what="prediction load")
    assert back.status_code == 409, back.text
    assert back.json()["error"]["code"] == "contract_changed"
    assert back.json()["error"]["contract_change"]["target"] == {"from": "price", "to": "species"}
    assert {status for status, _ in load.shapes} == {422}  # unchanged: still the houses model
    assert _served(stack) == houses_version
    # ...and the named endpoint refuses the same way.
    named = stack.post(f"/models/iris/versions/{iris_version}/activate", headers=stack.admin())
    assert named.status_code == 409 and named.json()["error"]["code"] == "contract_changed", named.text
    # ...and so does the CLI: one line on stderr, exit 1; `tpotserve registry` marks the mixed history.
    cli = tpotserve(stack, "rollback", iris_version)
    assert cli.returncode == 1, cli
    assert cli.stderr.startswith("tpotserve: error: 409 contract_changed: ") and cli.stderr.count("\n") == 1
    assert "replace_contract" in cli.stderr
    assert _served(stack) == houses_version
    listing = tpotserve(stack, "registry")
    assert listing.returncode == 0, listing
    iris_line = next(line for line in listing.stdout.splitlines() if " iris " in f" {line} ")
    assert "MIXED" in iris_line and "2 features" in iris_line, listing.stdout

    # With the override: 200, and the iris answers come back.
    forced = stack.post(f"/models/{iris_version}/activate?replace_contract=true", headers=stack.admin())
    assert forced.status_code == 200, forced.text
    stack.wait_all_workers_serve(iris_version, timeout_s=15)
    assert set(stack.predict_book().json()) == IRIS_KEYS
    # Forward again is refused the same way (the override is per request).
    assert stack.post(f"/models/{houses_version}/activate", headers=stack.admin()).status_code == 409
    assert _served(stack) == iris_version
    # The CLI's override: forward to the regressor, then back to iris, each deliberately.
    cli = tpotserve(stack, "activate", houses_version, "--replace-contract")
    assert cli.returncode == 0 and houses_version in cli.stdout, cli  # activated (or queued: it will be)
    stack.wait_all_workers_serve(houses_version, timeout_s=15)
    cli = tpotserve(stack, "rollback", iris_version, "--replace-contract")
    assert cli.returncode == 0, cli
    stack.wait_all_workers_serve(iris_version, timeout_s=15)
    assert set(stack.predict_book().json()) == IRIS_KEYS


def test_same_contract_and_new_classes_are_allowed(stack: LiveStack, iris_version: str) -> None:
    wait_for(lambda: _served(stack) == iris_version and _no_training(stack), 30, what="iris served, queue idle")
    # Same contract: the default model's own data set, no "dataset" at all.
    same = _retrain(stack, promote="never")
    assert same.status_code == 202, same.text
    assert same.json()["request"]["dataset"] == "iris"
    job = stack.wait_job(same.json()["job_id"], timeout_s=180)
    assert job["status"] == "finished", job
    assert job["result"]["contract"]["replaced"] is False
    assert job["result"]["contract"]["classes_added"] == []

    # A new class: allowed, said in the job's result, and the answer gains a key.
    wider = _upload(stack, _iris_with_a_new_class())
    grown = _retrain(stack, dataset=wider, target="species", promote="always")
    assert grown.status_code == 202, grown.text
    job = stack.wait_job(grown.json()["job_id"], timeout_s=180)
    assert job["status"] == "finished", job
    contract = job["result"]["contract"]
    assert contract["classes_added"] == ["hybrida"] and contract["replaced"] is False
    stack.wait_all_workers_serve(job["result"]["version"], timeout_s=15)
    answer = stack.predict_book().json()
    assert set(answer["probabilities"]) == IRIS_CLASSES | {"hybrida"}
    # Back to three classes would remove one: refused without the override (the fixture uses it).
    back = stack.post(f"/models/{iris_version}/activate", headers=stack.admin())
    assert back.status_code == 409, back.text
    assert back.json()["error"]["contract_change"]["classes_removed"] == ["hybrida"]
