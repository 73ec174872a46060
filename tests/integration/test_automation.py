"""Retraining on its own, on the real stack: a model's policy set through the API, the real
scheduler (two of them, one killed mid-run), real trainings enqueued on the real queue.

- an interval schedule fires on time, exactly once per due time with two schedulers running,
  and a SIGKILLed scheduler loses no policy and enqueues nothing twice;
- a drift trigger does not fire on rows like the training rows, fires on shifted rows, and
  its minimum spacing holds a second firing back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from redis import Redis
from sklearn.datasets import load_iris

from native.stack import REPO, SERVICE_COMMANDS
from tpotserve.datasets import IRIS_FEATURES, iris_frame

from .conftest import LiveStack, wait_for
from .test_cli import tpotserve

MODEL = "auto"
# 0.5 min: at 0.2 a loaded 2-core machine once ended a search before any pipeline was evaluated.
TINY = {"max_time_mins": 0.5, "generations": 1, "population_size": 4, "cv": 2, "baselines": False}
FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]


def say(message: str) -> None:
    print(f"[automation] {message}", flush=True)


@pytest.fixture(scope="module")
def auto(stack: LiveStack) -> Iterator[LiveStack]:
    """The stack with a model of its own, the scheduler, and a second scheduler started by
    mistake (its own process, stopped by its pid at the end)."""
    response = stack.post("/retrain", headers=stack.admin(), json={
        "model": MODEL, "dataset": "iris", "promote": "always", "random_state": 3, **TINY})
    assert response.status_code == 202, response.text
    job = stack.wait_job(response.json()["job_id"])
    assert job["status"] == "finished", job
    stack.native.start_service("scheduler")
    env = stack.native.service_env("scheduler")
    env["SCHEDULER_HEARTBEAT_FILE"] = str(stack.native.data_dir / "scheduler" / "second.alive")
    log = open(stack.native.log_dir / "scheduler-second.log", "ab")
    second = subprocess.Popen([str(REPO / SERVICE_COMMANDS["scheduler"][0]), *SERVICE_COMMANDS["scheduler"][1:]],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: Path(env["SCHEDULER_HEARTBEAT_FILE"]).exists(), timeout_s=60, what="the second scheduler")
        yield stack
    finally:
        requests_delete(stack)
        os.killpg(second.pid, signal.SIGTERM)
        try:
            second.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
        log.close()
        stack.native.stop_service("scheduler")


def requests_delete(stack: LiveStack) -> None:
    response = stack.session.delete(f"{stack.url}/models/{MODEL}/policy", headers=stack.admin(), timeout=30)
    assert response.status_code == 200, response.text


def put_policy(stack: LiveStack, policy: dict) -> dict:
    response = stack.session.put(f"{stack.url}/models/{MODEL}/policy", json=policy, headers=stack.admin(),
                                 timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def policy_state(stack: LiveStack) -> dict:
    response = stack.get(f"/models/{MODEL}/policy", headers=stack.admin())
    assert response.status_code == 200, response.text
    return response.json()


def automatic_jobs(redis: Redis, kind: str) -> list[dict]:
    """Every training job the schedulers enqueued for MODEL with ``kind``, read from RQ's job hashes."""
    found = []
    for key in redis.scan_iter(f"rq:job:auto-{MODEL}-{kind}-*"):
        job_id = key.decode().removeprefix("rq:job:")
        if ":" in job_id:
            continue  # RQ's per-job side keys
        found.append({"id": job_id, "enqueued_at": redis.hget(key, "enqueued_at")})
    return found


def fired(redis: Redis, kind: str) -> int:
    return int(redis.hget("tpotserve:sched:fired", f"{MODEL}|{kind}") or 0)


def test_a_bad_policy_is_a_422_and_nothing_is_written(auto: LiveStack) -> None:
    for bad, field in (({"schedule": {"cron": "every day"}}, "schedule"),
                       ({"schedule": {"every_s": 60, "cron": "0 3 * * *"}}, "schedule"),
                       ({"triggers": {"drift": {"share": 2}}}, "triggers.drift.share"),
                       ({"budget": {"max_time_mins": 10_000}}, "max_time_mins"),
                       ({"surprise": True}, "surprise")):
        response = auto.session.put(f"{auto.url}/models/{MODEL}/policy", json=bad, headers=auto.admin(), timeout=30)
        assert response.status_code == 422, (bad, response.text)
        assert field in json.dumps(response.json()), (bad, response.json())
    assert auto.session.put(f"{auto.url}/models/{MODEL}/policy", json={}, timeout=30).status_code == 401
    assert policy_state(auto)["policy"] is None
    assert auto.session.put(f"{auto.url}/models/nope/policy", json={}, headers=auto.admin(),
                            timeout=30).status_code == 404


def test_an_interval_fires_on_time_once_with_two_schedulers_and_survives_a_killed_one(auto: LiveStack) -> None:
    redis = auto.redis()
    before = fired(redis, "schedule")
    written = put_policy(auto, {"schedule": {"every_s": 20}, "budget": TINY})
    stored = json.loads((auto.native.model_dir / "models" / MODEL / "policy.json").read_text())
    due = stored["set_at_epoch"] + 20
    assert written["policy"]["schedule"] == {"cron": None, "timezone": "UTC", "every_s": 20}
    job_id = f"auto-{MODEL}-schedule-{int(due)}"

    job = wait_for(lambda: auto.get(f"/jobs/{job_id}").json() if auto.get(f"/jobs/{job_id}").status_code == 200
                   else None, timeout_s=60, interval_s=0.2, what="the scheduled training")
    enqueued = time.time()
    say(f"due {due:.1f}, enqueued within {enqueued - due:.2f} s: {job['trigger']}")
    assert job["kind"] == "schedule" and job["trigger"]["kind"] == "schedule", job
    assert job["trigger"]["every_s"] == 20 and job["request"]["model"] == MODEL
    assert enqueued - due < 5, "on time: within a few ticks of its due time"

    # SIGKILL the supervised scheduler mid-run: it is started again, reads the same policy,
    # and neither it nor the second scheduler enqueues this due time again.
    leader = auto.native.processes["scheduler"].popen
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    auto.native.start_service("scheduler")
    ticks = (redis.get("tpotserve:sched:tick") or b"0").decode()
    wait_for(lambda: (redis.get("tpotserve:sched:tick") or b"0").decode() != ticks, timeout_s=10,
             what="a tick after the restart")
    state = policy_state(auto)
    assert state["policy"] == written["policy"], "the policy survives the scheduler"
    assert state["scheduler"]["next_due_epoch"] > due
    assert [j["id"] for j in automatic_jobs(redis, "schedule")] == [job_id]
    assert fired(redis, "schedule") == before + 1
    requests_delete(auto)  # before the next due time

    done = auto.wait_job(job_id)
    assert done["status"] == "finished", done
    meta = json.loads((auto.native.model_dir / "models" / MODEL / "versions" / done["result"]["version"]
                       / "meta.json").read_text())
    assert meta["reason"] == "schedule" and meta["trigger"]["kind"] == "schedule", meta
    logs = auto.native.log_text("scheduler") + (auto.native.log_dir / "scheduler-second.log").read_text()
    enqueues = [line for line in logs.splitlines() if '"scheduler_enqueued"' in line and job_id in line]
    assert len(enqueues) == 1, enqueues


def _iris_rows(n: int, seed: int, shift: float = 0.0) -> list[dict]:
    X = load_iris().data
    rng = np.random.default_rng(seed)
    rows = X[rng.integers(0, len(X), n)] + rng.normal(0, 0.05, (n, 4)) + shift
    return [dict(zip(FEATURES, map(float, row))) for row in rows]


def _wait_served(stack: LiveStack) -> str:
    """The current version, once every API worker serves it (live rows count for the version that answered)."""
    current = json.loads((stack.native.model_dir / "models" / MODEL / "current.json").read_text())["version"]

    def everywhere() -> bool:
        return all(requests.get(f"{stack.url}/models/{MODEL}", timeout=10).json().get("version") == current
                   for _ in range(10))  # a new connection each: both workers answer

    wait_for(everywhere, timeout_s=30, interval_s=0.2, what=f"every worker serving {current}")
    return current


def _send(stack: LiveStack, rows: list[dict]) -> None:
    for start in range(0, len(rows), 50):
        response = stack.post(f"/models/{MODEL}/predict", json={"instances": rows[start:start + 50]})
        assert response.status_code == 200, response.text


def test_drift_fires_on_shifted_rows_only_and_spacing_holds(auto: LiveStack) -> None:
    redis = auto.redis()
    before = fired(redis, "drift")
    policy = {"triggers": {"drift": {"share": 0.5, "min_rows": 100, "window_s": 10}}, "min_spacing_s": 3600,
              "budget": TINY}
    put_policy(auto, policy)
    _wait_served(auto)

    # Rows like the training rows: judged (enough rows), nothing fires.
    _send(auto, _iris_rows(300, seed=1))

    def judged() -> dict | None:
        drift = (policy_state(auto)["scheduler"] or {}).get("triggers", {}).get("drift") or {}
        return drift if drift.get("enough_rows") else None

    try:
        calm = wait_for(judged, timeout_s=20, interval_s=0.2, what="the in-distribution rows judged")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the scheduler's state: {policy_state(auto)}") from None
    say(f"in distribution: {calm}")
    assert calm["fired"] is False and calm["drifted_share"] < 0.5
    assert fired(redis, "drift") == before and automatic_jobs(redis, "drift") == []

    # Every feature moved by several of its standard deviations: the trigger fires.
    _send(auto, _iris_rows(300, seed=2, shift=4.0))
    jobs = wait_for(lambda: automatic_jobs(redis, "drift"), timeout_s=20, interval_s=0.2, what="the drift training")
    assert len(jobs) == 1
    job = auto.get(f"/jobs/{jobs[0]['id']}").json()
    say(f"drift fired: {job['trigger']}")
    assert job["kind"] == "drift" and job["trigger"]["figures"]["drifted_share"] >= 0.5
    assert set(job["trigger"]["figures"]["drifted_features"]) >= {"PetalLength"}
    done = auto.wait_job(job["id"])
    assert done["status"] == "finished", done

    # Still shifted against whatever is served now: the spacing holds the next training back.
    _wait_served(auto)  # the trained version, if the gate published it
    _send(auto, _iris_rows(300, seed=3, shift=4.0))
    held = wait_for(lambda: (policy_state(auto)["scheduler"] or {}).get("held_by_spacing"), timeout_s=20,
                    interval_s=0.2, what="the spacing holding a second drift training")
    say(f"held by spacing: {held}")
    assert held["fired"] == ["drift"] and held["min_spacing_s"] == 3600
    assert len(automatic_jobs(redis, "drift")) == 1 and fired(redis, "drift") == before + 1

    # The CLI says the same, and removes the policy.
    shown = tpotserve(auto, "policy", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    assert "trigger drift" in shown.stdout and "held back by the spacing" in shown.stdout, shown.stdout
    removed = tpotserve(auto, "policy", "delete", "--model", MODEL)
    assert removed.returncode == 0 and "no policy" in removed.stdout, (removed.stdout, removed.stderr)
    assert policy_state(auto)["policy"] is None


def test_feedback_fires_after_n_labelled_rows_and_the_training_learns_from_them(auto: LiveStack) -> None:
    redis = auto.redis()
    redis.delete(f"tpotserve:sched:spacing:{MODEL}")  # the drift test's spacing: this is another policy
    put_policy(auto, {"triggers": {"feedback": {"rows": 50}}, "data": {"feedback_rows": True, "max_feedback_rows": 40},
                      "min_spacing_s": 600, "budget": TINY})
    served = _wait_served(auto)
    start = wait_for(lambda: ((policy_state(auto)["scheduler"] or {}).get("triggers") or {}).get("feedback"),
                     timeout_s=20, interval_s=0.2, what="the feedback trigger evaluated")
    assert start["fired"] is False and start["new_rows"] == 0

    X, y = load_iris().data, load_iris().target_names[load_iris().target]
    rows = [dict(zip(FEATURES, map(float, x))) for x in X[::2][:60]]
    truth = [str(label) for label in y[::2][:60]]
    response = auto.post(f"/models/{MODEL}/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    pid = response.headers["X-Prediction-ID"]
    items = [{"id": f"{pid}:{i}", "label": t} for i, t in enumerate(truth)]

    def fed() -> dict | None:  # the answer is kept once the worker's buffer is flushed (MONITORING_FLUSH_S)
        response = auto.post(f"/models/{MODEL}/feedback", json=items)
        assert response.status_code == 200, response.text
        return response.json() if response.json()["accepted"] else None

    feedback = wait_for(fed, timeout_s=10, interval_s=0.2, what="the feedback joined to its answers")
    assert feedback["accepted"] == 60 and feedback["kept_rows"] == 60, feedback

    jobs = wait_for(lambda: automatic_jobs(redis, "feedback"), timeout_s=20, interval_s=0.2, what="the feedback training")
    assert len(jobs) == 1
    job = auto.wait_job(jobs[0]["id"])
    say(f"feedback fired: {job['trigger']}; result {job['result']}")
    assert job["status"] == "finished", job
    assert job["trigger"]["figures"]["new_rows"] == 60 and job["trigger"]["served_version"] == served
    assert job["request"]["feedback_rows"] == 40
    version_dir = auto.native.model_dir / "models" / MODEL / "versions" / job["result"]["version"]
    meta = json.loads((version_dir / "meta.json").read_text())
    assert meta["trigger"]["kind"] == "feedback" and meta["feedback_rows"] == 40, meta
    kept = (version_dir / "feedback_rows.csv").read_text().splitlines()
    assert kept[0] == ",".join([*FEATURES, "species"]) and len(kept) == 41
    assert "feedback_rows.csv" in meta["files"]  # hashed with the version
    # The count starts again: no second training on the same rows.
    after = wait_for(lambda: (policy_state(auto)["scheduler"]["triggers"]["feedback"]
                              if policy_state(auto)["scheduler"]["checked_at"] > job["enqueued_at"] else None),
                     timeout_s=20, interval_s=0.2, what="a tick after the training")
    assert after["new_rows"] == 0 and len(automatic_jobs(redis, "feedback")) == 1
    requests_delete(auto)


def _shadow_traffic(stack: LiveStack, served: str, shadow: str, rows: int) -> dict:
    """Iris rows through the gateway until the shadow compared ``rows`` of them, then the truth
    for every answer (sent again while answers still sit in a worker's buffer)."""
    frame = iris_frame()
    sent: list[tuple[str, list[str]]] = []

    def compared() -> dict | None:
        batch = frame.sample(30, random_state=len(sent))
        response = stack.post(f"/models/{MODEL}/predict", json={"instances": batch[IRIS_FEATURES].to_dict("records")})
        assert response.status_code == 200, response.text
        sent.append((response.headers["X-Prediction-ID"], batch["species"].tolist()))
        figures = stack.get(f"/models/{MODEL}/shadow").json().get("figures") or {}
        pair = (figures.get("served_version"), figures.get("shadow_version")) == (served, shadow)
        return figures if pair and figures["rows"] >= rows else None

    wait_for(compared, timeout_s=60, interval_s=0.05, what=f"{rows} rows compared")
    items = [{"id": f"{pid}:{i}", "label": label} for pid, labels in sent for i, label in enumerate(labels)]

    def scored() -> dict | None:
        stack.post(f"/models/{MODEL}/feedback", json=items)
        body = stack.get(f"/models/{MODEL}/shadow").json()
        if body.get("figures") is None:  # the scheduler judged and promoted it before this read
            return {**body, "evaluation": {"reason": "promoted before the report was read"}}
        return body if body["figures"]["labelled"]["rows"] >= rows * 0.9 else None

    return wait_for(scored, timeout_s=30, interval_s=0.5, what="the paired scores")


def _activate(stack: LiveStack, version: str) -> None:
    response = stack.post(f"/models/{MODEL}/versions/{version}/activate", headers=stack.admin())
    assert response.status_code in (200, 202), response.text
    wait_for(lambda: stack.get(f"/models/{MODEL}").json().get("version") == version, timeout_s=30,
             what=f"{version} served")
    _wait_served(stack)


def test_a_better_shadow_is_promoted_on_feedback_and_a_worse_one_is_not(auto: LiveStack) -> None:
    good = _wait_served(auto)
    frame = iris_frame()
    shuffled = frame.assign(species=np.random.default_rng(0).permutation(frame["species"].to_numpy()))
    dataset = auto.upload_csv(shuffled)
    trained = auto.post("/retrain", headers=auto.admin(), json={
        "model": MODEL, "dataset": dataset["id"], "target": "species", "promote": "never", **TINY})
    assert trained.status_code == 202, trained.text
    job = auto.wait_job(trained.json()["job_id"])
    assert job["status"] == "finished" and job["result"]["published"] is False, job
    bad = job["result"]["version"]
    put_policy(auto, {"promote": {"min_rows": 100, "margin": 0.05, "p_value": 0.01}})

    # The good version in shadow of the bad one: the scheduler promotes it once feedback says so.
    _activate(auto, bad)
    shadowed = auto.post(f"/models/{MODEL}/versions/{good}/shadow", headers=auto.admin(), json={"share": 1.0})
    assert shadowed.status_code == 200, shadowed.text
    report = _shadow_traffic(auto, bad, good, rows=150)
    say(f"better shadow: {report['evaluation']['reason']}")
    wait_for(lambda: auto.get(f"/models/{MODEL}").json().get("version") == good, timeout_s=30, interval_s=0.2,
             what="the scheduler promoting the shadow")
    history = auto.get(f"/models/{MODEL}/versions").json()
    promotion = history["activations"][0]
    say(f"promoted: {promotion}")
    assert (promotion["version"], promotion["from"], promotion["reason"], promotion["by"]) == (
        good, bad, "promotion", "scheduler")
    assert promotion["details"]["decision"] == "promote" and promotion["details"]["p_value"] < 0.01
    assert history["current"] == good and auto.get(f"/models/{MODEL}/shadow").json()["shadow"] is None
    # One call rolls it back: the activation of the version it replaced.
    _activate(auto, promotion["from"])
    assert auto.get(f"/models/{MODEL}/versions").json()["activations"][0]["reason"] == "activate"

    # The bad version in shadow of the good one: it never is.
    _activate(auto, good)
    shadowed = auto.post(f"/models/{MODEL}/versions/{bad}/shadow", headers=auto.admin(), json={"share": 1.0})
    assert shadowed.status_code == 200, shadowed.text
    report = _shadow_traffic(auto, good, bad, rows=150)
    judged = wait_for(lambda: ((policy_state(auto)["scheduler"] or {}).get("shadow") or {}).get("reason", "")
                      .startswith("not better yet") and policy_state(auto)["scheduler"]["shadow"],
                      timeout_s=20, interval_s=0.2, what="the scheduler judging the worse shadow")
    say(f"worse shadow: {judged}")
    assert judged["decision"] == "wait" and auto.get(f"/models/{MODEL}").json()["version"] == good
    assert auto.get(f"/models/{MODEL}/versions").json()["activations"][0]["reason"] == "activate"
    cleared = auto.session.delete(f"{auto.url}/models/{MODEL}/shadow", headers=auto.admin(), timeout=30)
    assert cleared.status_code == 200, cleared.text
    requests_delete(auto)
