"""The gateway's promises: rate limits as JSON 429, request ids end to end, no secrets in logs."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from .conftest import API_KEY, SIGNING_KEY, LiveStack, wait_for


def test_retrain_is_rate_limited_with_a_json_429(stack: LiveStack) -> None:
    def post(_: int) -> requests.Response:
        return requests.post(stack.url + "/retrain", json={}, timeout=10)  # no key: cheap 401s

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, range(200)))
    statuses = {r.status_code for r in answers}
    assert statuses <= {401, 429}, statuses
    limited = [r for r in answers if r.status_code == 429]
    assert limited, "nginx never rate-limited 200 fast /retrain requests"
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert limited[0].headers["Retry-After"] == "1"
    # /predict has its own, much larger zone: unaffected.
    assert stack.predict_book().status_code == 200
    # Leave the zone refilled for the tests that follow.
    wait_for(lambda: requests.post(stack.url + "/retrain", json={}, timeout=10).status_code == 401, 30)


def test_a_request_id_is_logged_by_nginx_and_the_api(stack: LiveStack) -> None:
    request_id = f"trace-{uuid.uuid4()}"
    response = stack.post("/predict", json={"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4,
                                            "PetalWidth": 0.2}, headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id
    wait_for(lambda: request_id in stack.native.log_text("nginx"), 5, what="nginx's access line")
    line = wait_for(
        lambda: next((l for l in stack.native.log_text("api").splitlines() if request_id in l), None),
        5,
        what="the API's request line",
    )
    import json

    entry = json.loads(line)
    assert entry["route"] == "/predict" and entry["status"] == 200
    assert entry["model_version"] == response.headers["X-Model-Version"]
    assert entry["latency_ms"] >= 0


def test_secrets_never_reach_the_logs(stack: LiveStack) -> None:
    # A wrong key and the right one, both sent: neither may be logged anywhere.
    stack.post("/retrain", json={"generations": 0}, headers={"Authorization": "Bearer not-the-key-123"})
    stack.post("/retrain", json={"generations": 0}, headers=stack.admin())
    for name in ("api", "nginx", "worker", "worker-control", "redis"):
        text = stack.native.log_text(name)
        assert text, f"{name} wrote no log at all"
        for secret in (API_KEY, SIGNING_KEY, "not-the-key-123"):
            assert secret not in text, f"{secret!r} appears in the {name} log"
