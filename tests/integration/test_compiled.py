"""Compiled inference on the real stack (issue 22): a model retrained through POST /retrain is
stored with its signed ONNX form, served by ONNX Runtime through nginx, and answers as its
scikit-learn pipeline does (same labels, probabilities within the stated tolerance), one row
and a 10,000-row batch alike."""

from __future__ import annotations

import hashlib
import json

import joblib
import numpy as np

from tpotserve.compiled import PROBA_ATOL
from tpotserve.datasets import iris_frame

from .conftest import SIGNING_KEY, LiveStack, wait_for

NAME = "compiled-iris"
# A seeded small search: one real TPOT run (~30 s), its pick or a baseline published.
SEARCH = {"max_time_mins": 0.5, "generations": 2, "population_size": 6, "cv": 3, "random_state": 7}
FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]


def _retrain(stack: LiveStack) -> str:
    response = stack.post("/retrain", json={**SEARCH, "model": NAME, "dataset": "iris", "promote": "always"},
                          headers=stack.admin())
    assert response.status_code == 202, response.text
    job = stack.wait_job(response.json()["job_id"])
    assert job["status"] == "finished", job
    return job["result"]["version"]


def test_a_retrained_model_is_served_compiled_and_answers_as_its_pipeline(stack: LiveStack) -> None:
    version = _retrain(stack)
    directory = stack.model_dir / "models" / NAME / "versions" / version
    meta = json.loads((directory / "meta.json").read_text())
    record = meta["compiled"]
    assert record["file"] == "model.onnx", f"{meta['pipeline']}: {record['reason']}"
    raw = (directory / "model.onnx").read_bytes()
    # Covered like every document (meta.json's files) and signed like the artifact.
    assert meta["files"]["model.onnx"] == record["sha256"] == hashlib.sha256(raw).hexdigest()
    import hmac

    assert record["signature"] == hmac.new(SIGNING_KEY.encode(), raw, hashlib.sha256).hexdigest()

    wait_for(lambda: stack.get(f"/models/{NAME}").json().get("version") == version, 20, what="the new version")
    info = stack.get(f"/models/{NAME}").json()
    serving = info["serving"]
    assert serving["engine"] == "onnxruntime", serving
    assert serving["compiled"]["max_rows"] >= 1

    pipeline = joblib.load(directory / "model.joblib")
    classes = meta["classes"]
    frame = iris_frame()
    rng = np.random.default_rng(3)
    rows = frame[FEATURES].to_numpy(dtype=float)[rng.choice(len(frame), 40, replace=False)]
    expected = pipeline.predict_proba(rows)
    for row, want in zip(rows, expected):
        answer = stack.post(f"/models/{NAME}/predict", json=dict(zip(FEATURES, row.tolist()))).json()
        assert answer["model_version"] == version
        assert answer["Prediction"] == classes[int(want.argmax())]
        got = np.array([answer["probabilities"][str(c)] for c in classes])
        assert np.abs(got - want).max() <= PROBA_ATOL, (answer, want)

    batch_rows = np.resize(rows, (10_000, 4))
    batch = stack.post(f"/models/{NAME}/predict",
                       json={"instances": [dict(zip(FEATURES, r)) for r in batch_rows.tolist()]}).json()
    want = pipeline.predict_proba(batch_rows)
    assert batch["predictions"] == [classes[i] for i in want.argmax(axis=1)]
    got = np.array([[p[str(c)] for c in classes] for p in batch["probabilities"]])
    assert np.abs(got - want).max() <= PROBA_ATOL

    metrics = stack.get("/metrics").text
    assert f'tpotserve_inference_engine_requests_total{{engine="onnxruntime",model="{NAME}"}}' in metrics
