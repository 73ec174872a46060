"""Many named models in one stack, checked from outside through nginx: two models trained
from two uploaded CSVs served beside the default iris model while the versions of one
swap under load, V2 metadata and inference for both with a standard V2 client, and the
book's request unchanged."""

from __future__ import annotations

import io
import time
from collections import Counter

import numpy as np
import requests
import tritonclient.http as triton

from .conftest import BOOK_REQUEST, LiveStack, wait_for
from .test_faults import PredictLoad, say

# Small real TPOT runs (as in test_faults.py): this test is about serving them.
TINY = {"max_time_mins": 0.3, "generations": 2, "population_size": 6, "cv": 3}
HOUSES = "houses"
SEEDS = "seeds"


def _csv(columns: list[str], rows: np.ndarray, labels: list) -> bytes:
    out = io.StringIO()
    out.write(",".join(columns) + "\n")
    for row, label in zip(rows, labels):
        out.write(",".join(f"{v:.3f}" for v in row) + f",{label}\n")
    return out.getvalue().encode()


def _houses_csv() -> bytes:
    """A regression data set: price from rooms, area and age."""
    rng = np.random.default_rng(7)
    X = np.column_stack([rng.integers(1, 7, 160), rng.uniform(30, 200, 160), rng.uniform(0, 80, 160)])
    price = 40 * X[:, 0] + 2.5 * X[:, 1] - 0.8 * X[:, 2] + rng.normal(0, 5, 160)
    return _csv(["rooms", "area", "age", "price"], X, [f"{p:.2f}" for p in price])


def _seeds_csv() -> bytes:
    """A classification data set with text labels and other feature names than iris."""
    rng = np.random.default_rng(11)
    X = rng.uniform(0, 10, size=(150, 3))
    score = X[:, 0] + 0.5 * X[:, 1]
    labels = np.where(score < 5, "kama", np.where(score < 10, "rosa", "canadian"))
    return _csv(["length", "width", "groove", "label"], X, list(labels))


def _upload(stack: LiveStack, data: bytes) -> str:
    return stack.upload_csv(data)["id"]


def _train(stack: LiveStack, **body) -> dict:
    response = stack.post("/retrain", json={**TINY, "promote": "always", **body}, headers=stack.admin())
    assert response.status_code == 202, response.text
    return response.json()


def _activate(stack: LiveStack, session: requests.Session, model: str, version: str) -> None:
    response = session.post(f"{stack.url}/models/{model}/versions/{version}/activate", headers=stack.admin(),
                            timeout=30)
    assert response.status_code in (200, 202), response.text
    if response.status_code == 202:
        assert stack.wait_job(response.json()["job_id"], timeout_s=30)["status"] == "finished"


def _every_worker_serves(stack: LiveStack, model: str, version: str) -> None:
    """Enough answers from the model that every API worker has had its turn."""
    wait_for(lambda: all(stack.post(f"/models/{model}/predict", json=_row(model)).headers.get("X-Model-Version")
                         == version for _ in range(12)), 15, interval_s=0.1, what=f"{model} {version} everywhere")


def _row(model: str) -> dict:
    return {"rooms": 3, "area": 90.0, "age": 12.0} if model == HOUSES else {"length": 4.0, "width": 3.0,
                                                                            "groove": 5.0}


def test_two_models_from_two_csvs_side_by_side_with_swaps_under_load(stack: LiveStack) -> None:
    houses_data, seeds_data = _upload(stack, _houses_csv()), _upload(stack, _seeds_csv())
    book_before = stack.predict_book()
    assert book_before.status_code == 200

    houses = _train(stack, model=HOUSES, dataset=houses_data, target="price")
    # Another model's training queues behind it: a 409 is only for a training of the same model.
    seeds = _train(stack, model=SEEDS, dataset=seeds_data, target="label")
    again = stack.post("/retrain", json={**TINY, "model": SEEDS, "dataset": seeds_data, "target": "label"},
                       headers=stack.admin())
    assert again.status_code == 409, again.text
    assert again.json()["error"]["job_id"] == seeds["job_id"]
    for job in (houses, seeds):
        done = stack.wait_job(job["job_id"], timeout_s=240)
        assert done["status"] == "finished", done["error"]
    # Without a data set, a named model retrains on its own (not on iris).
    second = _train(stack, model=SEEDS)
    assert (second["request"]["dataset"], second["request"]["target"]) == (seeds_data, "label")
    done = stack.wait_job(second["job_id"], timeout_s=240)
    assert done["status"] == "finished", done["error"]

    # Batches: the regressor answers numbers, the classifier its own text labels and
    # probabilities over exactly those.
    houses_batch = stack.post(f"/models/{HOUSES}/predict", json={"instances": [_row(HOUSES)] * 2}).json()
    assert all(isinstance(p, float) for p in houses_batch["predictions"]) and "probabilities" not in houses_batch
    seeds_rows = [_row(SEEDS), {"length": 9.5, "width": 9.5, "groove": 1.0}, {"length": 0.5, "width": 0.5,
                                                                               "groove": 1.0}]
    seeds_batch = stack.post(f"/models/{SEEDS}/predict", json={"instances": seeds_rows}).json()
    labels = {"kama", "rosa", "canadian"}
    assert len(seeds_batch["predictions"]) == 3 and set(seeds_batch["predictions"]) <= labels, seeds_batch
    assert all(set(p) == labels for p in seeds_batch["probabilities"]), seeds_batch

    listing = stack.get("/registry").json()
    assert [m["name"] for m in listing["models"]][:1] == ["iris"] and listing["default"] == "iris"
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name[HOUSES]["task"] == "regression" and by_name[SEEDS]["task"] == "classification"
    seed_versions = [v["version"] for v in stack.get(f"/models/{SEEDS}/versions").json()["versions"]]
    assert len(seed_versions) == 2, seed_versions
    first, latest = seed_versions
    houses_version = stack.get(f"/models/{HOUSES}").json()["version"]
    iris_version = book_before.json()["model_version"]

    # Load on all three models while seeds' versions swap every second.
    with requests.Session() as admin, \
            PredictLoad(stack.url, 3) as iris_load, \
            PredictLoad(f"{stack.url}/models/{HOUSES}", 3, body=_row(HOUSES)) as houses_load, \
            PredictLoad(f"{stack.url}/models/{SEEDS}", 3, body=_row(SEEDS)) as seeds_load:
        begin = time.monotonic()
        for slot in range(10):
            time.sleep(max(0.0, begin + slot - time.monotonic()))  # pacing only
            _activate(stack, admin, SEEDS, first if slot % 2 == 0 else latest)
        _every_worker_serves(stack, SEEDS, latest)  # the last swap went back to the latest version
    for name, load in (("iris", iris_load), (HOUSES, houses_load), (SEEDS, seeds_load)):
        say(f"models under swaps: {name}: {load.summary()}")
        assert load.count() > 50, load.summary()
        assert load.failures() == [], load.summary()
    assert set(Counter(s.version for s in seeds_load.snapshot())) == {first, latest}
    assert {s.version for s in houses_load.snapshot()} == {houses_version}
    assert {s.version for s in iris_load.snapshot()} == {iris_version}

    # The same answers through a standard V2 client, metadata from each model's feature schema.
    client = triton.InferenceServerClient(url=stack.url.removeprefix("http://"))
    for name, features in ((HOUSES, ["rooms", "area", "age"]), (SEEDS, ["length", "width", "groove"])):
        meta = client.get_model_metadata(name)
        assert [i["name"] for i in meta["inputs"]] == features
        row = [[float(_row(name)[f]) for f in features]]
        tensor = triton.InferInput("input-0", [1, 3], "FP64")
        tensor.set_data_from_numpy(np.asarray(row), binary_data=False)
        result = client.infer(name, [tensor], outputs=[triton.InferRequestedOutput("predict", binary_data=False)])
        v2 = result.as_numpy("predict").tolist()[0]
        v2 = v2.decode() if isinstance(v2, bytes) else v2
        answer = stack.post(f"/models/{name}/predict", json=_row(name)).json()
        if name == HOUSES:
            assert abs(v2 - answer["Prediction"]) < 1e-9
        else:
            assert v2 == answer["Prediction"] and "Probability" in answer
    assert client.is_model_ready(HOUSES) and client.is_model_ready(SEEDS)

    # The book's request: the same answer, byte for byte, as before the other models came.
    book_after = stack.predict_book()
    assert book_after.content == book_before.content
    assert list(book_after.json()) == [*(f"In_{k}" for k in BOOK_REQUEST), "Prediction", "Probability",
                                       "probabilities", "model_version"]
    assert stack.post("/models/iris/predict", json=BOOK_REQUEST).content == book_before.content


def test_unknown_and_bad_model_names_are_clean_errors(stack: LiveStack) -> None:
    unknown = stack.post("/models/no-such-model/predict", json=BOOK_REQUEST)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found", unknown.text
    bad = stack.post("/retrain", json={"model": "current"}, headers=stack.admin())
    assert bad.status_code == 422 or bad.status_code == 400, bad.text
    assert bad.json()["error"]["field"] == "model"
    assert stack.get("/v2/models/no-such-model").status_code == 404
