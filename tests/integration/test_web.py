"""The web page at /, end to end in headless Chromium against the real stack.

Debian's ``chromium`` driven by Playwright for Python (Playwright's own browser
download is not used: these machines are offline). The page is static files
served by nginx; everything it shows comes from the same JSON API.

The tests also write the screenshots in docs/images/ (docs/web.md shows them).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from rq.registry import StartedJobRegistry

from tpotserve import jobs

from .conftest import API_KEY, LiveStack, wait_for

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
IRIS_FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
SPECIES = ("setosa", "versicolor", "virginica")
SETOSA = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}
# A tiny, real TPOT run (as tests/integration/test_retraining.py's SMALL).
TINY = {"max_time_mins": "0.5", "generations": "2", "population_size": "6", "cv": "3"}
TRAINING_TIMEOUT_MS = 240_000
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, stack: LiveStack) -> Iterator[Page]:
    """A fresh browser context per test (so a fresh sessionStorage), failing on page errors."""
    context = browser.new_context(viewport=VIEWPORT, base_url=stack.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    # An API error the test provokes on purpose is logged by Chromium as "Failed to load resource".
    page.on(
        "console",
        lambda msg: errors.append(msg.text)
        if msg.type == "error" and not msg.text.startswith("Failed to load resource: the server responded with a status of 4")
        else None,
    )
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def restore_current(stack: LiveStack) -> Iterator[str]:
    """The version served before the test; served again afterwards, so later tests see an iris model."""
    before = stack.get("/readyz").json()["model_version"]
    yield before
    response = stack.post(f"/models/{before}/activate", headers=stack.admin())
    assert response.status_code == 200, response.text
    stack.wait_all_workers_serve(before, timeout_s=10)


def _open(page: Page) -> None:
    page.goto("/")
    expect(page.locator("#feature-fields input")).not_to_have_count(0)


def _field_error(page: Page, form: str, field: str):
    return page.locator(f"{form} [data-error-for='{field}']")


def _no_training_active(stack: LiveStack) -> None:
    """An earlier test's run would make the page's POST /retrain a 409: wait it out."""
    redis = stack.redis()

    def idle() -> bool:
        started = StartedJobRegistry(jobs.TRAINING_QUEUE, connection=redis).get_job_ids()
        return not started and redis.llen(f"rq:queue:{jobs.TRAINING_QUEUE}") == 0

    wait_for(idle, 240, interval_s=0.5, what="no training queued or running")


def test_the_page_is_static_and_served_by_nginx(stack: LiveStack) -> None:
    page = stack.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers.get("X-Request-ID")
    for asset, media_type in (("/assets/app.js", "javascript"), ("/assets/charts.js", "javascript"),
                              ("/assets/style.css", "text/css")):
        response = stack.get(asset)
        assert response.status_code == 200, asset
        # A module script served as application/octet-stream is refused by the browser.
        assert media_type in response.headers["Content-Type"], (asset, response.headers["Content-Type"])
    # No CDN: every script and stylesheet the page loads comes from this server.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)


def test_prediction_form_from_the_model_schema(page: Page, stack: LiveStack) -> None:
    _open(page)
    inputs = page.locator("#feature-fields input")
    expect(inputs).to_have_count(len(IRIS_FEATURES))
    for name in IRIS_FEATURES:
        expect(page.get_by_label(name, exact=True)).to_be_visible()

    # An empty field: the API's error is shown next to the field it names.
    for name, value in SETOSA.items():
        if name != "PetalWidth":
            page.get_by_label(name, exact=True).fill(str(value))
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(_field_error(page, "#predict-form", "PetalWidth")).to_contain_text("missing feature")
    expect(page.get_by_label("PetalWidth", exact=True)).to_have_attribute("aria-invalid", "true")

    page.get_by_label("PetalWidth", exact=True).fill(str(SETOSA["PetalWidth"]))
    page.get_by_role("button", name="Predict", exact=True).click()
    predicted = page.locator("#predicted-value")
    expect(predicted).to_have_text(re.compile("|".join(SPECIES)))
    expect(_field_error(page, "#predict-form", "PetalWidth")).to_be_empty()
    bars = page.locator("#proba-chart rect.bar")
    expect(bars).to_have_count(3)
    shown = {bars.nth(i).get_attribute("data-class"): float(bars.nth(i).get_attribute("data-probability"))
             for i in range(3)}
    assert set(shown) == set(SPECIES)
    assert math.isclose(sum(shown.values()), 1.0, abs_tol=0.01)
    # The page shows what the API answers for the same measurements.
    api = stack.post("/predict", json=SETOSA).json()
    assert predicted.inner_text() == api["Prediction"]
    assert page.locator("#proba-chart rect.bar.top").get_attribute("data-class") == api["Prediction"]
    expect(page.locator("#prediction-meta")).to_contain_text(api["model_version"])
    page.locator("#predict-panel").screenshot(path=IMAGES / "prediction.png")


def test_model_selector_from_the_registry(page: Page, stack: LiveStack) -> None:
    registry = stack.get("/registry").json()
    _open(page)
    select = page.locator("#model-select")
    expect(select).to_have_value(registry["default"])  # the default model, as before named models
    expect(select.locator("option")).to_have_count(len(registry["models"]))
    expect(page.locator("#serving")).to_contain_text(f"serving {registry['default']}")
    expect(page.locator("#rt-model")).to_have_value(registry["default"])
    # A name the API refuses: the error sits next to the model field, and nothing is queued.
    page.locator("#rt-model").fill("not a name")
    page.get_by_role("button", name="Start training").click()
    page.locator("#key-input").fill(API_KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(_field_error(page, "#retrain-form", "model")).to_contain_text("is not a model name")
    expect(page.locator("#job")).to_be_hidden()

    # A server from before named models (no /registry): no selector, the unnamed endpoints only.
    page.route("**/registry", lambda route: route.fulfill(
        status=404, content_type="application/json", body='{"error": {"code": "not_found", "message": "no"}}'))
    with page.expect_response("**/registry"):
        _open(page)
    expect(page.locator("#feature-fields input")).to_have_count(len(IRIS_FEATURES))
    expect(page.locator("#serving")).to_have_text(re.compile(r"^serving \d{8}T"))  # a version, no name
    expect(page.locator("#model-pick")).to_be_hidden()
    expect(page.locator("#rt-model-field")).to_be_hidden()


def test_retrain_panel_trains_and_serves_a_new_version(
    page: Page, stack: LiveStack, restore_current: str
) -> None:
    _no_training_active(stack)
    _open(page)
    panel = page.locator("#retrain-panel")
    expect(page.locator("#rt-dataset option[value='iris']")).to_have_count(1)

    # A header-only CSV: refused, and the error sits next to the file field. This is the
    # first admin action: the page asks for the key once, and keeps it in sessionStorage.
    page.locator("#upload-file").set_input_files(
        files=[{"name": "empty.csv", "mimeType": "text/csv", "buffer": b"a,b,species\n"}]
    )
    panel.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#key-dialog")).to_be_visible()
    page.locator("#key-input").fill(API_KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(_field_error(page, "#upload-form", "file")).not_to_be_empty()
    assert page.evaluate("sessionStorage.getItem('tpotserve.adminKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0

    page.select_option("#rt-dataset", "iris")
    expect(page.locator("#rt-target")).to_have_value("species")
    for name, value in TINY.items():
        page.locator(f"#retrain-form [name='{name}']").fill(value)
    page.select_option("#rt-promote", "always")
    started = time.monotonic()
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#key-dialog")).to_be_hidden()  # asked once: not again
    expect(page.locator("#job")).to_be_visible()
    job_id = page.locator("#job-id").inner_text()
    assert job_id

    # Live progress: record what the panel says while the run goes on.
    seen: list[str] = []
    outcome = page.locator("#job-outcome")
    deadline = time.monotonic() + TRAINING_TIMEOUT_MS / 1000
    while "Now serving" not in outcome.inner_text():
        assert time.monotonic() < deadline, f"no new version after {TRAINING_TIMEOUT_MS} ms; saw {seen}"
        assert "failed" not in outcome.inner_text() and "canceled" not in outcome.inner_text(), outcome.inner_text()
        text = " | ".join(page.locator(s).inner_text() for s in ("#job-status", "#job-generation-text", "#job-progress"))
        if not seen or seen[-1] != text:
            seen.append(text)
        page.wait_for_timeout(250)
    training_s = time.monotonic() - started

    job = stack.get(f"/jobs/{job_id}").json()
    assert job["status"] == "finished", job
    new_version = job["result"]["version"]
    assert new_version != restore_current
    assert job["result"]["published"] is True
    assert job["request"]["model"] == "iris"  # the selected (default) model, named in the form
    assert len(seen) >= 3, seen  # the text changed as the run went on
    assert any("stage searching" in text for text in seen), seen
    assert re.search(r"generation \d+ of 2", seen[-1]), seen
    expect(outcome).to_contain_text(new_version)
    expect(page.locator("#job-status")).to_have_text("finished")
    # The page shows the new version as served, as the API does.
    assert stack.get("/models/current").json()["version"] == new_version
    expect(page.locator("#serving")).to_contain_text(new_version)
    expect(page.locator(f"#versions tr[data-version='{new_version}']")).to_have_class("current")
    print(f"web retrain: {training_s:.1f} s from click to the new version served; progress seen: {seen}")
    panel.screenshot(path=IMAGES / "retrain.png")


def test_model_panel_history_chart_and_rollback(page: Page, stack: LiveStack, restore_current: str) -> None:
    listing = stack.get("/models").json()
    current = stack.get("/models/current").json()
    _open(page)
    panel = page.locator("#models-panel")
    expect(panel.locator("#current-model")).to_contain_text(current["version"])
    expect(panel.locator("#current-pipeline")).to_have_text(current["pipeline"])
    points = panel.locator("#score-chart circle.point.cv")
    # Versions of another contract (earlier tests' regressors of the default model) are listed, not charted.
    expect(points).to_have_count(len([v for v in listing["versions"] if not v.get("other_contract")]))
    assert len(listing["versions"]) >= 1
    expect(panel.locator("#score-chart circle.point.cv.current")).to_have_count(1)
    expect(panel.locator("#versions tbody tr")).to_have_count(len(listing["versions"]))

    # Roll back to another iris version with the button; the page asks for the key (a new session).
    others = [
        v["version"] for v in listing["versions"]
        if not v["current"] and v.get("dataset") == "iris" and [f["name"] for f in v["features"]] == IRIS_FEATURES
    ]
    if not others:
        pytest.fail(f"no other iris version to roll back to in {[v['version'] for v in listing['versions']]}")
    target = others[-1]
    row = panel.locator(f"#versions tr[data-version='{target}']")
    row.get_by_role("button", name="Activate").click()
    expect(page.locator("#key-dialog")).to_be_visible()
    page.locator("#key-input").fill(API_KEY)
    page.locator("#key-input").press("Enter")
    expect(row).to_have_class("current", timeout=30_000)
    expect(panel.locator("#current-model")).to_contain_text(target)
    expect(row).to_contain_text("serving")
    assert stack.get("/models").json()["current"] == target
    panel.screenshot(path=IMAGES / "models.png")



def test_leaderboard_card_drift_and_live_quality(page: Page, stack: LiveStack) -> None:
    """The selected model's leaderboard and card as the API has them, the drift of its live rows
    (a bar per feature, a histogram on click) and the live quality of the feedback sent."""
    default = stack.get("/registry").json()["default"]
    board = stack.get(f"/models/{default}/versions/current/leaderboard").json()
    card = stack.get(f"/models/{default}/versions/current/card?format=json").json()
    flowers = [
        {"SepalLength": 5.0, "SepalWidth": 3.4, "PetalLength": 1.5, "PetalWidth": 0.2},
        {"SepalLength": 5.9, "SepalWidth": 2.8, "PetalLength": 4.3, "PetalWidth": 1.3},
        {"SepalLength": 7.7, "SepalWidth": 3.0, "PetalLength": 6.1, "PetalWidth": 2.3},
    ]
    counted_before = stack.get("/drift").json()["rows"]  # earlier tests' rows are in the window too
    answered = stack.post("/predict", json={"instances": [flowers[i % 3] for i in range(250)]})
    assert answered.status_code == 200, answered.text
    prediction_id = answered.headers["X-Prediction-ID"]
    truth = [{"id": f"{prediction_id}:{i}", "label": label}
             for i, label in enumerate(answered.json()["predictions"][:5])]
    # Answers reach Redis at the workers' next flush (MONITORING_FLUSH_S): the drift rows say when.
    wait_for(lambda: stack.get("/drift").json()["rows"] >= counted_before + 250, 30, interval_s=0.5,
             what="250 more live rows")
    fed = stack.post("/feedback", json=truth)
    assert fed.status_code == 200 and fed.json()["accepted"] == 5, fed.text
    drift = stack.get("/drift").json()

    _open(page)
    rows = page.locator("#leaderboard tbody tr")
    expect(rows).to_have_count(len(board["rows"]))
    selected = [r["name"] for r in board["rows"] if r["selected"]]
    expect(page.locator("#leaderboard tr.selected")).to_have_count(len(selected))
    assert page.locator("#leaderboard tr.selected").get_attribute("data-name") == selected[0]
    baselines = [r for r in board["rows"] if r["source"] == "baseline"]
    expect(page.locator("#leaderboard tr.baseline .tag.baseline")).to_have_count(len(baselines))
    expect(page.locator("#leaderboard-summary")).to_contain_text(board["selection"]["summary"])
    winner = stack.get("/models").json()
    current = next(v for v in winner["versions"] if v["current"])
    expect(page.locator("#versions tr.current td.winner")).to_have_text(current["selection"]["winner"])

    model_card = page.locator("#model-card")
    if card["pipeline"].get("code"):
        assert page.locator("#card-code").inner_text().strip() == card["pipeline"]["code"].strip()
    else:
        expect(page.locator("#card-code-unavailable")).to_be_visible()
    expect(model_card.locator("#card-confusion tbody tr")).to_have_count(len(card["confusion_matrix"]["labels"]))
    expect(model_card.locator("#card-features tbody tr")).to_have_count(len(card["dataset"]["features"]))
    expect(model_card.locator("#card-importance rect.bar")).to_have_count(
        len(card["permutation_importance"].get("features") or []))
    expect(model_card.locator("#card-interval")).to_contain_text("interval")
    expect(model_card.locator("#card-gate")).to_contain_text(card["gate"]["reason"] or "Gate")
    page.locator("#card-panel").screenshot(path=IMAGES / "card.png")

    bars = page.locator("#drift-chart rect.bar")
    expect(bars).to_have_count(len(IRIS_FEATURES))
    verdicts = {f["feature"]: f["verdict"] for f in drift["features"]}
    for name in IRIS_FEATURES:
        bar = page.locator(f"#drift-chart rect.bar[data-feature='{name}']")
        assert bar.get_attribute("data-verdict") == verdicts[name]
        assert f"verdict-{verdicts[name]}" in (bar.get_attribute("class") or "")
    page.locator("#drift-chart g.bar-row[data-feature='PetalWidth']").click()
    expect(page.locator("#drift-feature")).to_have_value("PetalWidth")
    petal = next(f for f in drift["features"] if f["feature"] == "PetalWidth")
    expect(page.locator("#drift-histogram rect.hist.reference")).to_have_count(len(petal["bins"]))
    expect(page.locator("#drift-histogram rect.hist.live")).to_have_count(len(petal["bins"]))
    expect(page.locator("#drift-summary")).to_contain_text("live rows")
    served_row = page.locator(f"#quality-table tbody tr[data-version='{current['version']}']")
    expect(served_row).to_contain_text("(serving)")
    assert int(served_row.locator("td").nth(1).inner_text()) >= 5
    expect(page.locator("#score-chart circle.point.live")).not_to_have_count(0)
    page.locator("#watch-panel").screenshot(path=IMAGES / "drift.png")


def test_retrain_form_sends_baselines_and_description(page: Page, stack: LiveStack) -> None:
    """Unchecking Baselines sends "baselines": false with the description; the answer is faked, so
    nothing trains, and its error sits next to the field it names."""
    sent: list[dict] = []

    def refuse(route) -> None:  # noqa: ANN001 - Playwright's Route
        sent.append(route.request.post_data_json)
        route.fulfill(status=422, content_type="application/json", body=(
            '{"error": {"code": "invalid_input", "message": "description is too long", "field": "description"}}'))

    page.route("**/retrain", refuse)
    _open(page)
    expect(page.locator("#rt-baselines")).to_be_checked()
    page.locator("#rt-baselines").uncheck()
    page.locator("#rt-description").fill("spring <b>data</b>")
    page.locator("#rt-random-state").fill("7")
    page.get_by_role("button", name="Start training").click()
    page.locator("#key-input").fill(API_KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(_field_error(page, "#retrain-form", "description")).to_have_text("description is too long")
    assert sent and sent[-1]["baselines"] is False
    assert sent[-1]["description"] == "spring <b>data</b>" and sent[-1]["random_state"] == 7
    expect(page.locator("#job")).to_be_hidden()


def test_an_activation_across_contracts_shows_the_refusal_and_asks_before_replacing(
    page: Page, stack: LiveStack
) -> None:
    """Issue 26 on the page: a stored version of another contract is marked and not charted;
    its Activate button shows the 409 next to it and asks; declined, nothing changes;
    confirmed, it is activated with replace_contract."""
    _no_training_active(stack)
    served = stack.get("/readyz").json()["model_version"]
    rows = "\n".join(f"{r},{a},{40 * r + 2.5 * a:.2f}" for r, a in
                     ((1 + i % 6, 30.0 + (i * 37) % 170) for i in range(60)))
    upload = stack.post("/datasets", data=f"rooms,area,price\n{rows}\n".encode(),
                        headers={**stack.admin(), "Content-Type": "text/csv"})
    assert upload.status_code in (200, 201), upload.text
    # A regressor stored beside the iris versions of the default model, not served.
    started = stack.post("/retrain", headers=stack.admin(), json={
        "dataset": upload.json()["id"], "target": "price", "task": "regression", "replace_contract": True,
        "promote": "never", "max_time_mins": 1, "generations": 1, "population_size": 4, "cv": 3})
    assert started.status_code == 202, started.text
    job = stack.wait_job(started.json()["job_id"], timeout_s=240)
    assert job["status"] == "finished" and job["result"]["published"] is False, job
    other = job["result"]["version"]
    try:
        _open(page)
        panel = page.locator("#models-panel")
        expect(panel.locator("#current-model")).to_contain_text("4 features")
        expect(panel.locator("#current-model")).to_contain_text("another contract")  # the mixed history
        row = panel.locator(f"#versions tr[data-version='{other}']")
        expect(row).to_have_class(re.compile(r"\bother-contract\b"))
        expect(row).to_contain_text("(another contract)")
        expect(panel.locator("#score-caption")).to_contain_text("of another contract not charted")

        asked: list[str] = []

        def decline(dialog) -> None:
            asked.append(dialog.message)
            dialog.dismiss()

        page.once("dialog", decline)
        row.get_by_role("button", name="Activate").click()
        expect(page.locator("#key-dialog")).to_be_visible()
        page.locator("#key-input").fill(API_KEY)
        page.locator("#key-input").press("Enter")
        refusal = row.locator(".refusal")
        expect(refusal).to_contain_text("contract")
        wait_for(lambda: asked, 10, what="the confirmation")
        assert "target species → price" in asked[0] and "anyway" in asked[0], asked
        assert stack.get("/readyz").json()["model_version"] == served  # declined: nothing changed
        expect(row).not_to_have_class(re.compile(r"\bcurrent\b"))

        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_role("button", name="Activate").click()
        expect(row).to_have_class(re.compile(r"\bcurrent\b"), timeout=30_000)
        expect(refusal).to_have_count(0)
        assert stack.get("/models").json()["current"] == other
    finally:
        back = stack.post(f"/models/{served}/activate", json={"replace_contract": True}, headers=stack.admin())
        assert back.status_code == 200, back.text
        stack.wait_all_workers_serve(served, timeout_s=15)


def test_policy_panel_shows_saves_refuses_and_removes_a_policy(page: Page, stack: LiveStack) -> None:
    """The "Retraining on its own" panel against the real API and control worker: no policy, an
    example saved (disabled, so no scheduler acts on it), a bad one refused with the server's
    message and nothing written, then removed. The stored policy.json is read back each time."""
    stored = stack.native.model_dir / "models" / "iris" / "policy.json"

    def stored_policy() -> dict | None:
        return (json.loads(stored.read_text()) or {}).get("policy") if stored.exists() else None

    _open(page)
    page.get_by_role("button", name="Show the policy").click()
    page.locator("#key-input").fill(API_KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#policy-summary")).to_contain_text("No policy")
    expect(page.locator("#policy-summary")).to_contain_text("it trains only on request")
    try:
        page.get_by_role("button", name="Example").click()
        example = json.loads(page.locator("#policy-text").input_value())
        assert example["schedule"]["cron"] and example["triggers"]["drift"]
        page.locator("#policy-text").fill(json.dumps({**example, "enabled": False}))
        page.get_by_role("button", name="Save policy").click()
        expect(page.locator("#policy-summary")).to_contain_text("(disabled)")
        expect(page.locator("#policy-summary")).to_contain_text("Policy set")
        saved = stored_policy()
        assert saved is not None and saved["enabled"] is False and saved["schedule"]["cron"] == example["schedule"]["cron"]
        shown = json.loads(page.locator("#policy-text").input_value())
        assert shown["triggers"]["drift"]["share"] == example["triggers"]["drift"]["share"]
        page.locator("#policy-panel").screenshot(path=str(IMAGES / "policy-panel.png"))

        page.locator("#policy-text").fill(json.dumps({"enabled": False, "triggers": {"drift": {"share": 2}}}))
        page.get_by_role("button", name="Save policy").click()
        expect(page.locator("#policy-form .form-error[data-error-for='']")).to_contain_text("triggers.drift.share")
        assert stored_policy() == saved, "a refused policy writes nothing"

        page.locator("#policy-text").fill("{not json")
        page.get_by_role("button", name="Save policy").click()
        expect(page.locator("#policy-form .form-error[data-error-for='']")).to_contain_text("not JSON")
    finally:
        page.get_by_role("button", name="Remove").click()
        expect(page.locator("#policy-summary")).to_contain_text("No policy")
    assert stored_policy() is None
