"""The gateway's promises: rate limits as JSON 429, request ids end to end, no secrets in logs."""

from __future__ import annotations

import http.client
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from .conftest import API_KEY, SIGNING_KEY, LiveStack, wait_for


def _post_from(source_ip: str, port: int, path: str) -> tuple[int, dict, dict]:
    """POST from another loopback address: nginx keys its limits on the client
    address, so this client's bucket is not the one the other tests use."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source_ip, 0))
    try:
        conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_retrain_is_rate_limited_with_a_json_429(stack: LiveStack) -> None:
    port = stack.native.gateway_port

    def post(_: int) -> tuple[int, dict, dict]:
        return _post_from("127.0.0.2", port, "/retrain")  # no key: cheap 401s

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, range(200)))
    statuses = {status for status, _, _ in answers}
    assert statuses <= {401, 429}, statuses
    limited = [(headers, body) for status, headers, body in answers if status == 429]
    assert limited, "nginx never rate-limited 200 fast /retrain requests"
    headers, body = limited[0]
    assert body["error"]["code"] == "rate_limited"
    assert headers["Retry-After"] == "1"
    # Other clients, and /predict, are unaffected.
    assert requests.post(stack.url + "/retrain", json={}, timeout=10).status_code == 401
    assert stack.predict_book().status_code == 200


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
