"""The optional RQ dashboard at /rq/: the real rq-dashboard (with the pinned rq and
redis) behind nginx, which asks the API whether the request carries the admin key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from .conftest import API_KEY, LiveStack


@pytest.fixture(scope="module")
def dashboard(stack: LiveStack) -> Iterator[str]:
    # Not one of the services a stack starts by default.
    assert "rq-dashboard" not in stack.native.processes
    stack.native.start_service("rq-dashboard")
    try:
        yield stack.url + "/rq/"
    finally:
        stack.native.stop_service("rq-dashboard")


def assert_refused(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "unauthorized"
    # So a browser asks for the key (as a Basic password); nginx may send a Bearer challenge too.
    assert "Basic realm=" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "auth, headers",
    [
        (None, {}),
        (("admin", "not-the-key"), {}),
        (("admin", ""), {}),
        (None, {"Authorization": "Bearer not-the-key"}),
    ],
    ids=["no-key", "wrong-basic-password", "empty-basic-password", "wrong-bearer"],
)
def test_the_dashboard_needs_the_admin_key(dashboard: str, auth, headers) -> None:
    assert_refused(requests.get(dashboard, auth=auth, headers=headers, timeout=10))
    # Its JSON endpoints and static files too, not only the page.
    assert_refused(requests.get(dashboard + "0/data/queues.json", auth=auth, headers=headers, timeout=10))


def test_the_admin_key_as_a_basic_password_opens_the_dashboard(dashboard: str) -> None:
    page = requests.get(dashboard, auth=("anyone", API_KEY), timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<title>RQ dashboard</title>" in page.text
    # Its assets are served under the same prefix, through the same check.
    assert 'href="/rq/static/' in page.text
    assert requests.get(dashboard + "static/css/main.css", auth=("x", API_KEY), timeout=10).status_code == 200


def test_the_dashboard_reads_the_stacks_queues_and_workers(stack: LiveStack, dashboard: str) -> None:
    """rq-dashboard against the pinned rq: queues, registries and live workers."""
    queues = requests.get(dashboard + "0/data/queues.json", headers=stack.admin(), timeout=10)
    assert queues.status_code == 200, queues.text
    by_name = {q["name"]: q for q in queues.json()["queues"]}
    assert "training" in by_name
    assert by_name["training"]["finished_job_registry_count"] >= 1, "the bootstrap training finished"
    finished = requests.get(dashboard + "0/data/jobs/training/finished/8/asc/1.json", headers=stack.admin(),
                            timeout=10)
    assert finished.status_code == 200
    assert any(job["id"] == "bootstrap" for job in finished.json()["jobs"])
    workers = requests.get(dashboard + "0/data/workers.json", headers=stack.admin(), timeout=10)
    assert workers.status_code == 200
    served = {queue for worker in workers.json()["workers"] for queue in worker["queues"]}
    assert {"training", "control"} <= served
