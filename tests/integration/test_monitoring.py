"""Watching a model on the real stack, through nginx: a model trained from an uploaded CSV,
rows from its training distribution (nothing flagged) and then from a shifted one (the
shifted feature flagged, the others not), feedback with known truth (the expected live
accuracy), and a frozen Redis under prediction load (no prediction lost)."""

from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import pandas as pd

from .conftest import LiveStack, wait_for
from .test_faults import PredictLoad, log_offset, log_since, say

MODEL = "watched"
FEATURES = ["a", "b", "c", "d"]
TINY = {"max_time_mins": 0.5, "generations": 1, "population_size": 2, "cv": 3, "random_state": 1}


def _rows(seed: int, n: int, shift_c: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(0, 1, n), "b": rng.normal(5, 2, n), "c": rng.uniform(0, 10, n),
                          "d": rng.normal(-3, 0.5, n)})
    frame["c"] += shift_c
    return frame


def _truth(frame: pd.DataFrame) -> list[str]:
    return np.where(frame["a"] + (frame["b"] - 5) / 2 > 0, "hi", "lo").tolist()


def _send(stack: LiveStack, frame: pd.DataFrame, batch: int = 50) -> list[tuple[str, list]]:
    answers = []
    for start in range(0, len(frame), batch):
        chunk = frame.iloc[start:start + batch]
        response = stack.post(f"/models/{MODEL}/predict", json={"instances": chunk.to_dict("records")})
        assert response.status_code == 200, response.text
        answers.append((response.headers["X-Prediction-ID"], response.json()["predictions"]))
    return answers


def _drift(stack: LiveStack, since: float, rows: int) -> dict:
    def counted() -> dict | None:
        body = stack.get(f"/models/{MODEL}/drift", params={"since": f"{since:.3f}"}).json()
        return body if body["rows"] >= rows else None

    return wait_for(counted, timeout_s=30, interval_s=0.2, what=f"{rows} rows counted")


def test_drift_flags_the_shifted_feature_only_and_feedback_gives_the_live_accuracy(stack: LiveStack) -> None:
    training = _rows(0, 600)
    training["label"] = _truth(training)
    dataset = stack.upload_csv(training)
    response = stack.post("/retrain", headers=stack.admin(), json={
        "model": MODEL, "dataset": dataset["id"], "target": "label", "promote": "always", **TINY})
    assert response.status_code == 202, response.text
    job = stack.wait_job(response.json()["job_id"], timeout_s=240)
    assert job["status"] == "finished", job
    version = job["result"]["version"]
    wait_for(lambda: stack.get(f"/models/{MODEL}").json().get("version") == version, timeout_s=15,
             what="the new model served")

    # Rows like the training rows: nothing drifts.
    started = time.time()
    same = _rows(1, 400)
    answers = _send(stack, same)
    report = _drift(stack, started, 400)
    say(f"same distribution: {[(f['feature'], f['js_distance'], f['psi']) for f in report['features']]}")
    assert report["version"] == version and report["rows"] == 400
    assert report["verdict"] == "ok" and report["drifted_features"] == [], report

    # Feedback with the true labels: the live accuracy is the share the model got right.
    truth = _truth(same)
    predicted = [p for _, batch in answers for p in batch]
    items = [{"id": f"{pid}:{i}", "label": truth[offset + i]}
             for offset, (pid, batch) in zip(range(0, 400, 50), answers) for i in range(len(batch))]
    feedback = stack.post(f"/models/{MODEL}/feedback", json={"feedback": items + [{"id": "gone:0", "label": "hi"}]})
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["accepted"] == 400 and len(feedback.json()["skipped"]) == 1
    quality = stack.get(f"/models/{MODEL}/quality").json()
    (live,) = [v for v in quality["versions"] if v["version"] == version]
    expected = sum(p == t for p, t in zip(predicted, truth)) / 400
    assert live["rows"] == 400 and math.isclose(live["accuracy"], expected), (live, expected)
    assert live["holdout_score"] == job["result"]["holdout_score"]

    # A later window (the next 1-second bucket) of rows whose "c" moved by half its range.
    boundary = math.floor(time.time()) + 1
    wait_for(lambda: time.time() >= boundary, timeout_s=3, interval_s=0.05, what="the next bucket")
    _send(stack, _rows(2, 400, shift_c=5.0))
    shifted = _drift(stack, boundary, 400)
    say(f"shifted c: {[(f['feature'], f['js_distance'], f['psi']) for f in shifted['features']]}")
    assert shifted["rows"] == 400 and shifted["drifted_features"] == ["c"], shifted
    assert shifted["verdict"] == "drift" and shifted["drifted_share"] == 0.25
    c = next(f for f in shifted["features"] if f["feature"] == "c")
    assert 0.4 < c["out_of_range_share"] < 0.6

    metrics = stack.get("/metrics").text
    assert f'tpotserve_drift_js_distance{{feature="c",model="{MODEL}"}}' in metrics


def test_a_frozen_redis_loses_no_prediction(stack: LiveStack) -> None:
    """Redis stopped (SIGSTOP: connections hang rather than fail) while predictions flow: the
    counts are dropped and counted, every prediction is answered."""
    redis = stack.native.processes["redis"].popen
    assert b"redis-server" in open(f"/proc/{redis.pid}/cmdline", "rb").read()
    offset = log_offset(stack, "api")
    with PredictLoad(stack.url, 4, pause_s=0.01) as load:
        wait_for(lambda: len(load.snapshot()) >= 50, timeout_s=20, what="predictions flowing")
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            frozen_at = len(load.snapshot())
            wait_for(lambda: "monitoring data dropped" in log_since(stack, "api", offset), timeout_s=30,
                     what="an API worker dropping its counts")
            wait_for(lambda: len(load.snapshot()) >= frozen_at + 200, timeout_s=30,
                     what="200 predictions while Redis is frozen")
        finally:
            os.kill(redis.pid, signal.SIGCONT)
    say(f"redis frozen: {load.summary()}")
    assert load.failures() == [], load.failures()[:5]
    dropped = sum(float(line.rsplit(" ", 1)[1]) for line in stack.get("/metrics").text.splitlines()
                  if line.startswith("tpotserve_monitoring_dropped_total"))
    assert dropped > 0
