"""`docker compose up` for real: the project's images built and run by Docker's engine.

The base images are the local look-alikes of tests/compose/images.py (Docker Hub cannot
be reached here), so what the official images do at start (redis's step-down to its
user, nginx's envsubst into conf.d as uid 101) happens here too. Everything talks to
the gateway's published port on 127.0.0.1, as a user's client would.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from native.proc import children
from native.stack import free_port
from tests.compose import images
from tests.tools import tool
from tests.tools import wait_for as _wait_for

REPO = Path(__file__).resolve().parents[2]
PROJECT = "tpotserve-compose-test"
API_KEY = "compose-test-key"
BOOK_REQUEST = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 0.2, "PetalWidth": 3.4}
SPECIES = {"setosa", "versicolor", "virginica"}
# Small, real TPOT runs (the bootstrap model and the retrain below).
BUDGET = {"TPOT_MAX_TIME_MINS": "0.5", "TPOT_GENERATIONS": "2", "TPOT_POPULATION_SIZE": "6", "TPOT_CV": "3"}
UP_TIMEOUT_S = 1500  # a first build on an empty machine: base images, pip install
BOOTSTRAP_TIMEOUT_S = 300
# Each poll here runs docker or crosses its network: twice a second is enough.
wait_for = functools.partial(_wait_for, interval_s=0.5)


@dataclass
class ComposeStack:
    env: dict[str, str]
    env_file: Path
    url: str
    timings: dict[str, float] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    def compose(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool("docker"), "compose", "--project-name", PROJECT, "--env-file", str(self.env_file), *args],
            cwd=REPO, env=self.env, check=check, timeout=timeout_s, capture_output=True, text=True,
        )

    def compose_bytes(self, *args: str, stdin: bytes | None = None, timeout_s: float = 300) -> bytes:
        """A compose command whose stdout is data (an archive), not text."""
        result = subprocess.run(
            [tool("docker"), "compose", "--project-name", PROJECT, "--env-file", str(self.env_file), *args],
            cwd=REPO, env=self.env, input=stdin, capture_output=True, timeout=timeout_s,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout

    def container(self, service: str) -> str:
        ids = self.compose("ps", "--quiet", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return ids[0]

    def inspect(self, service: str, template: str) -> str:
        result = subprocess.run(
            [tool("docker"), "inspect", "--format", template, self.container(service)],
            check=True, capture_output=True, text=True,
        )
        return result.stdout.strip()

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.url + path, timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def lookalikes() -> float:
    """The official base images' look-alikes, built unless present; the seconds it took."""
    docker = tool("docker")
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    assert info.returncode == 0, f"Docker's engine is not running (scripts/docker-engine.sh starts it): {info.stderr}"
    assert subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0, "compose v2 missing"
    started = time.monotonic()
    images.ensure_all()
    return time.monotonic() - started


def _run(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([tool("docker"), "run", "--rm", *args], capture_output=True, text=True, timeout=timeout_s)


def test_the_redis_lookalike_fails_without_capabilities_as_the_official_image_does(lookalikes: float) -> None:
    # The official entrypoint steps down from root with gosu, which cap_drop: [ALL] forbids.
    refused = _run("--cap-drop", "ALL", "redis:7-alpine", "redis-server", "--appendonly", "yes")
    assert refused.returncode != 0
    assert 'failed switching to "redis": operation not permitted' in refused.stderr + refused.stdout
    # As its own uid it needs no step-down (what docker-compose.yml does).
    fine = _run("--cap-drop", "ALL", "--user", "999:1000", "redis:7-alpine", "redis-server", "--version")
    assert fine.returncode == 0 and "Redis server v=7." in fine.stdout, fine.stderr


def test_the_nginx_lookalike_renders_nothing_into_a_conf_dir_it_cannot_write(lookalikes: float) -> None:
    templates = f"{REPO / 'nginx' / 'templates'}:/etc/nginx/templates:ro"
    root_owned = _run("--read-only", "--cap-drop", "ALL", "--tmpfs", "/tmp", "--tmpfs", "/etc/nginx/conf.d",
                      "-v", templates, "nginxinc/nginx-unprivileged:1.27-alpine", "nginx", "-t")
    assert "/etc/nginx/conf.d is not writable" in root_owned.stdout, root_owned.stdout
    # Owned by uid 101 (what docker-compose.yml mounts), the same step renders the templates.
    owned = _run("--read-only", "--cap-drop", "ALL", "--tmpfs", "/tmp", "--tmpfs", "/etc/nginx/conf.d:uid=101,gid=101",
                 "-v", templates, "nginxinc/nginx-unprivileged:1.27-alpine", "nginx", "-t")
    assert "not writable" not in owned.stdout
    assert "Running envsubst on /etc/nginx/templates/default.conf.template" in owned.stdout, owned.stdout


@pytest.fixture(scope="module")
def stack(lookalikes: float, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    lookalikes_s = lookalikes

    # An env file of our own, so a developer's .env never leaks into the test.
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("")
    port, tls_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("API_KEY", "MODEL_SIGNING_KEY", "PREDICT_API_KEY")},
        "API_KEY": API_KEY,
        "MODEL_SIGNING_KEY": "compose-test-signing-key",
        "GATEWAY_PORT": str(port),
        "GATEWAY_TLS_PORT": str(tls_port),
        **BUDGET,
        "SCHEDULER_INTERVAL_S": "2",
    }
    compose = ComposeStack(env=env, env_file=env_file, url=f"http://127.0.0.1:{port}")
    compose.compose("down", "--volumes", "--remove-orphans", check=False)  # a run killed half-way
    try:
        started = time.monotonic()
        compose.compose("build", timeout_s=UP_TIMEOUT_S)
        built_s = time.monotonic() - started
        up = compose.compose("up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S),
                             timeout_s=UP_TIMEOUT_S + 60, check=False)
        assert up.returncode == 0, f"compose up failed:\n{up.stderr}\n{compose.compose('logs', '--tail', '60').stdout}"
        healthy_s = time.monotonic() - started - built_s
        # Healthy is not yet serving: the worker trains the bootstrap model after it registers.
        wait_for(
            lambda: compose.post("/predict", json=BOOK_REQUEST).status_code == 200,
            timeout_s=BOOTSTRAP_TIMEOUT_S, interval_s=1, what="the bootstrap model served",
        )
        first_prediction_s = time.monotonic() - started - built_s
        compose.timings = {
            "look-alike images": lookalikes_s, "build": built_s, "up --wait": healthy_s,
            "first prediction after up": first_prediction_s,
        }
        print(
            f"\ncompose: look-alikes {lookalikes_s:.0f} s, build {built_s:.0f} s, up --wait {healthy_s:.0f} s, "
            f"first 200 from /predict {first_prediction_s:.0f} s after `up`"
        )
        yield compose
    except BaseException:
        print(compose.compose("logs", "--tail", "80", check=False).stdout)
        raise
    finally:
        down = compose.compose("down", "--volumes", "--remove-orphans", check=False, timeout_s=180)
        assert down.returncode == 0, down.stderr


def test_the_images_start_as_the_official_ones_would(stack: ComposeStack) -> None:
    # The two start-up bugs, seen from inside: redis runs as its own uid (no gosu step-down
    # to fail), and nginx rendered its templates into conf.d as uid 101.
    assert stack.inspect("redis", "{{.Config.User}}") == "999:1000"
    redis_id = stack.compose("exec", "-T", "redis", "id", "-u").stdout.strip()
    assert redis_id == "999"
    rendered = stack.compose("exec", "-T", "nginx", "ls", "/etc/nginx/conf.d").stdout.split()
    assert "default.conf" in rendered
    assert stack.compose("exec", "-T", "nginx", "id", "-u").stdout.strip() == "101"
    for service in ("redis", "api", "worker", "worker-control", "scheduler", "nginx"):
        assert stack.inspect(service, "{{.State.Health.Status}}") == "healthy", service


def test_the_book_request_through_the_published_port(stack: ComposeStack) -> None:
    response = stack.post("/predict", json=BOOK_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["Prediction"] in SPECIES
    assert 0.0 <= body["Probability"] <= 1.0
    assert body["In_PetalWidth"] == 3.4


def test_a_batch(stack: ComposeStack) -> None:
    rows = [
        {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2},
        {"SepalLength": 6.7, "SepalWidth": 3.0, "PetalLength": 5.2, "PetalWidth": 2.3},
    ]
    response = stack.post("/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 2 and set(body["predictions"]) <= SPECIES
    assert body["predictions"][0] == "setosa"


def test_a_retrain_becomes_the_served_version(stack: ComposeStack) -> None:
    before = stack.post("/predict", json=BOOK_REQUEST).json()["model_version"]
    response = stack.post(
        "/retrain", json={"dataset": "iris", "generations": 2, "cv": 3, "promote": "always"}, headers=stack.admin()
    )
    assert response.status_code == 202, response.text
    location = response.headers["Location"]

    def ended() -> dict | None:
        job = stack.get(location).json()
        return job if job["status"] in ("finished", "failed", "canceled") else None

    job = wait_for(ended, timeout_s=300, what="the retrain job")
    assert job["status"] == "finished", job
    new = job["result"]["version"]
    assert new != before
    served = wait_for(
        lambda: (r := stack.post("/predict", json=BOOK_REQUEST)).status_code == 200
        and r.json()["model_version"] == new and r,
        timeout_s=30, what="the new version served",
    )
    assert served.json()["Prediction"] in SPECIES


def test_a_policy_set_through_the_gateway_is_read_by_the_scheduler_container(stack: ComposeStack) -> None:
    """The control worker writes policy.json on the shared volume; the scheduler (its own
    container, the volume read-only) evaluates it on its next tick."""
    policy = {"schedule": {"cron": "0 3 * * *"}, "triggers": {"drift": {"share": 0.5}}}
    written = stack.session.put(stack.url + "/models/iris/policy", json=policy, headers=stack.admin(), timeout=30)
    assert written.status_code == 200, written.text
    set_at = written.json()["set_at"]

    def evaluated() -> dict | None:
        view = stack.get("/models/iris/policy", headers=stack.admin()).json()
        state = view["scheduler"] or {}
        return state if state.get("checked_at", "") >= set_at and "drift" in state.get("triggers", {}) else None

    state = wait_for(evaluated, timeout_s=60, interval_s=0.5, what="the scheduler's evaluation of the policy")
    assert state["next_due"].endswith("T03:00:00Z") and state["triggers"]["drift"]["fired"] is False, state
    removed = stack.session.delete(stack.url + "/models/iris/policy", headers=stack.admin(), timeout=30)
    assert removed.status_code == 200 and removed.json()["policy"] is None, removed.text


def test_a_sigkilled_worker_is_restarted_and_predictions_never_fail(stack: ComposeStack) -> None:
    restarts = int(stack.inspect("worker", "{{.RestartCount}}"))
    init_pid = int(stack.inspect("worker", "{{.State.Pid}}"))  # docker-init (compose's `init: true`)
    (worker_pid,) = children(init_pid)
    assert b"rq" in Path(f"/proc/{worker_pid}/cmdline").read_bytes() or children(worker_pid)

    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def predict_loop() -> None:
        nonlocal answered
        with requests.Session() as session:
            deadline = time.monotonic() + 240
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = session.post(stack.url + "/predict", json=BOOK_REQUEST, timeout=10)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                answered += 1
                time.sleep(0.02)

    client = threading.Thread(target=predict_loop)
    client.start()
    try:
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(
            lambda: int(stack.inspect("worker", "{{.RestartCount}}")) > restarts,
            timeout_s=60, what="compose restarting the worker",
        )
        wait_for(
            lambda: stack.inspect("worker", "{{.State.Health.Status}}") == "healthy",
            timeout_s=180, what="the restarted worker healthy (registered in Redis)",
        )
    finally:
        stop.set()
        client.join()
    assert answered > 20
    assert failures == [], failures[:5]
    assert stack.inspect("worker", "{{.State.Running}}") == "true"
    print(f"\nworker SIGKILLed: restarted by compose, {answered} predictions, 0 failed")


def test_a_backup_streams_through_compose_as_documented(stack: ComposeStack) -> None:
    # docs/deploy.md: build the on-demand service first, then stream the archive to stdout.
    stack.compose("build", "backup", timeout_s=UP_TIMEOUT_S)
    archive = stack.compose_bytes("run", "--rm", "-T", "--no-deps", "backup", "create", "-")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert "models/models/iris/current.json" in names
    served = stack.post("/predict", json=BOOK_REQUEST).json()["model_version"]
    assert served in json.dumps(manifest)
