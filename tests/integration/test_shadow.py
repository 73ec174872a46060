"""Shadow candidates on the real stack, through nginx: a version trained on iris with shuffled
labels (same contract, near-random answers), held back by the gate and so put in shadow by the
policy's ``shadow.held_back``, every row sampled (share 1.0); agreement and the shadow's latency read back; feedback with the
true labels scores both on the same rows: the worse shadow is not promoted. Then the other
way round (the bad one served, the good one in shadow): promote. Each test starts from the
bootstrap version served (earlier tests on the shared stack may serve another). Activating the shadowed
version takes it out of shadow, and the stack ends as it started."""

from __future__ import annotations


import numpy as np

from tpotserve.datasets import IRIS_FEATURES, iris_frame

from .conftest import LiveStack, wait_for
from .test_cli import tpotserve
from .test_faults import say
from .test_web import browser, page  # noqa: F401 - fixtures (headless Chromium)

TINY = {"max_time_mins": 0.3, "generations": 1, "population_size": 4, "cv": 2, "baselines": False,
        "random_state": 1}


def _shadow(stack: LiveStack, version: str) -> dict:
    response = stack.post(f"/models/iris/versions/{version}/shadow", headers=stack.admin(), json={"share": 1.0})
    assert response.status_code in (200, 202), response.text
    if response.status_code == 202:
        stack.wait_job(response.json()["job_id"], timeout_s=30)
    return response.json()


def _traffic_then_feedback(stack: LiveStack, served: str, shadow: str, rows: int) -> dict:
    """Predict iris rows until the shadow compared ``rows`` of them (each worker starts sampling
    at its next poll of shadow.json), then send the truth for every answer."""
    frame = iris_frame()
    sent: list[tuple[str, list[str]]] = []

    def compared() -> dict | None:
        batch = frame.sample(30, random_state=len(sent))
        response = stack.post("/predict", json={"instances": batch[IRIS_FEATURES].to_dict("records")})
        assert response.status_code == 200, response.text
        sent.append((response.headers["X-Prediction-ID"], batch["species"].tolist()))
        report = stack.get("/models/iris/shadow").json()
        figures = report.get("figures") or {}
        ok = figures.get("served_version") == served and figures.get("shadow_version") == shadow
        return report if ok and figures["rows"] >= rows else None

    report = wait_for(compared, timeout_s=60, interval_s=0.05, what=f"{rows} rows compared")
    items = [{"id": f"{pid}:{i}", "label": label} for pid, labels in sent for i, label in enumerate(labels)]
    accepted = 0
    for start in range(0, len(items), 1000):
        accepted += stack.post("/models/iris/feedback", json=items[start:start + 1000]).json()["accepted"]

    def scored() -> dict | None:
        body = stack.get("/models/iris/shadow").json()
        return body if body["figures"]["labelled"]["rows"] >= rows * 0.9 else None

    # The answers may still sit in a worker's buffer (MONITORING_FLUSH_S) when feedback comes: send it again.
    def resent() -> dict | None:
        for start in range(0, len(items), 1000):
            stack.post("/models/iris/feedback", json=items[start:start + 1000])
        return scored()

    final = wait_for(resent, timeout_s=30, interval_s=0.5, what="the paired scores")
    say(f"served {served} vs shadow {shadow}: agreement {report['figures']['agreement']:.3f}, "
        f"latency {report['figures']['latency']}, labelled {final['figures']['labelled']}, "
        f"decision {final['evaluation']['decision']}: {final['evaluation']['reason']}")
    return final


def _serve(stack: LiveStack, version: str) -> None:
    """Earlier tests on the shared stack may leave another iris version served: start from a known one."""
    if stack.get("/models/iris/versions").json()["current"] != version:
        activated = stack.post(f"/models/iris/versions/{version}/activate", headers=stack.admin())
        assert activated.status_code in (200, 202), activated.text
    stack.wait_all_workers_serve(version, timeout_s=30)


def test_a_worse_shadow_is_not_promoted_and_a_better_one_is(stack: LiveStack) -> None:
    good = stack.bootstrap_version
    _serve(stack, good)
    frame = iris_frame()
    shuffled = frame.assign(species=np.random.default_rng(0).permutation(frame["species"].to_numpy()))
    dataset = stack.upload_csv(shuffled)
    # The policy's shadow.held_back: the candidate the gate holds back goes in shadow by itself.
    put = stack.session.put(stack.url + "/models/iris/policy", json={"shadow": {"held_back": True, "share": 1.0}},
                            headers=stack.admin(), timeout=30)
    assert put.status_code == 200, put.text
    try:
        response = stack.post("/retrain", headers=stack.admin(), json={
            "dataset": dataset["id"], "target": "species", "promote": "never", "queue": True, **TINY})
        assert response.status_code == 202, response.text
        job = stack.wait_job(response.json()["job_id"], timeout_s=180)
    finally:
        removed = stack.session.delete(stack.url + "/models/iris/policy", headers=stack.admin(), timeout=30)
        assert removed.status_code == 200, removed.text
    assert job["status"] == "finished" and job["result"]["published"] is False, job.get("error") or job
    bad = job["result"]["version"]
    held = job["result"]["shadow"]
    assert held["version"] == bad and held["share"] == 1.0 and held["by"] == "trainer", held
    assert held["reason"] == "held back by the gate: promote=never: stored, not served"

    # Refusals: the served version cannot be its own shadow.
    refused = stack.post(f"/models/iris/versions/{good}/shadow", headers=stack.admin())
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict", refused.text

    try:
        assert stack.get("/models/iris/shadow").json()["shadow"] == held
        worse = _traffic_then_feedback(stack, good, bad, rows=200)
        figures = worse["figures"]
        assert figures["agreement"] < 0.8 and figures["latency"]["calls"] > 0
        assert figures["latency"]["p50_ms"] > 0 and figures["latency"]["p95_ms"] >= figures["latency"]["p50_ms"]
        labelled = figures["labelled"]
        assert labelled["served"]["accuracy"] > 0.9 > 0.6 > labelled["shadow"]["accuracy"], labelled
        assert worse["evaluation"]["decision"] != "promote" and worse["promotion"]["enabled"] is False

        # The other way round: the bad one served, the good one in shadow.
        activated = stack.post(f"/models/iris/versions/{bad}/activate", headers=stack.admin())
        assert activated.status_code in (200, 202), activated.text
        stack.wait_all_workers_serve(bad, timeout_s=30)
        _shadow(stack, good)
        better = _traffic_then_feedback(stack, bad, good, rows=200)
        assert better["figures"]["labelled"]["shadow"]["accuracy"] > better["figures"]["labelled"]["served"]["accuracy"]
        assert better["evaluation"]["decision"] == "promote", better["evaluation"]
        assert better["evaluation"]["p_value"] < 0.05 and better["evaluation"]["b"] > better["evaluation"]["c"]

        metrics = stack.get("/metrics").text
        assert f'tpotserve_shadow_agreement{{model="iris",served_version="{bad}",version="{good}"}}' in metrics
    finally:
        # Promoting the shadow is a normal activation, and takes it out of shadow.
        back = stack.post(f"/models/iris/versions/{good}/activate", headers=stack.admin())
        assert back.status_code in (200, 202), back.text
        stack.wait_all_workers_serve(good, timeout_s=30)
        wait_for(lambda: stack.get("/models/iris/shadow").json()["shadow"] is None, timeout_s=10,
                 what="the shadow cleared by the activation")
        cleared = stack.session.delete(stack.url + "/models/iris/shadow", headers=stack.admin(), timeout=30)
        assert cleared.status_code == 200 and cleared.json()["cleared"] is None, cleared.text


def test_the_cli_and_the_page_show_the_shadow(page, stack: LiveStack) -> None:  # noqa: F811 - test_web's fixture
    """``tpotserve shadow set / shadow / shadow clear``, and the watch panel's shadow lines: the
    version, agreement and latency, both versions' rows, the decision."""
    from playwright.sync_api import expect

    served = stack.bootstrap_version
    _serve(stack, served)
    listing = stack.get("/models").json()
    others = [v["version"] for v in listing["versions"] if not v["current"] and not v["other_contract"]]
    assert others, "the test above stored a version beside the served one"
    run = tpotserve(stack, "shadow", "set", others[-1], "--share", "1")
    assert run.returncode == 0 and run.stdout == f"{others[-1]} in shadow, answering 100.0% of the served rows\n", run
    refused = tpotserve(stack, "shadow", "set", served)
    assert refused.returncode == 1 and "is the served version" in refused.stderr, refused
    try:
        frame = iris_frame()
        wait_for(lambda: (stack.post("/predict", json={"instances": frame[IRIS_FEATURES].head(20).to_dict("records")})
                          and (stack.get("/shadow").json()["figures"]["rows"] > 0)), timeout_s=30, what="shadow rows")
        page.goto("/")
        expect(page.locator("#shadow-summary")).to_contain_text(f"{others[-1]} in shadow of {served}")
        expect(page.locator("#shadow-summary")).to_contain_text("agreement")
        expect(page.locator("#shadow-table tbody tr")).to_have_count(2)
        expect(page.locator("#shadow-decision")).to_contain_text("decision: wait")
        report = tpotserve(stack, "shadow")
        assert report.returncode == 0, report
        assert report.stdout.startswith(f"model iris: {others[-1]} in shadow of {served}"), report.stdout
        assert "agreement" in report.stdout and "decision: wait" in report.stdout
    finally:
        cleared = tpotserve(stack, "shadow", "clear")
        assert cleared.returncode == 0 and cleared.stdout == f"shadow {others[-1]} cleared\n", cleared
