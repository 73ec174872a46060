"""Backups of the real running stack, through the documented commands.

`make backup` copies the session stack's store while clients predict and the
pointer is rewritten (activations); `make restore` puts it into a new, empty
data dir; a second native stack (API + nginx, no training worker, so nothing
trains) on that dir serves the same version, with the same sha256, and gives
the same answer to the book's request, with the signing key from the archive.
The session stack's volume holds named models (its trainer moved any
single-model store under ``models/<MODEL_NAME>/`` at start): the default model
is the one under test.

Make runs with `-o setup`: the targets' `setup` prerequisite would switch the
test venv (built by `setup-dev`) to the non-dev lock set.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from native.stack import NativeStack, free_port

from .conftest import BOOK_REQUEST, SIGNING_KEY, LiveStack, wait_for

REPO = Path(__file__).resolve().parents[2]
MODEL = "iris"  # MODEL_NAME's default, which the session stack runs with
UPLOAD = b"width,height,kind\n1.0,2.0,a\n3.0,4.5,b\n5.5,6.0,a\n7.0,8.0,b\n"


def model_store_dir(model_dir: Path) -> Path:
    """The default model's store on a model volume: <MODEL_DIR>/models/<name>/."""
    return model_dir / "models" / MODEL


def make(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-o", "setup", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False,
    )


@pytest.fixture
def key_file_like_a_native_run(stack: LiveStack) -> Iterator[Path]:
    """The session stack takes its key from MODEL_SIGNING_KEY. A native run without it keeps a
    generated key in DATA_DIR/signing.key: put the same key there, so `make backup` sees that layout."""
    path = stack.native.data_dir / "signing.key"
    created = not path.exists()
    if created:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(SIGNING_KEY)
    yield path
    if created:
        path.unlink(missing_ok=True)


def test_make_backup_of_a_serving_stack_restores_into_a_stack_that_serves_the_same_model(
    stack: LiveStack, tmp_path: Path, key_file_like_a_native_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = stack.upload_csv(UPLOAD)
    current = stack.get("/models/current").json()
    expected = stack.predict_book().json()
    assert expected["model_version"] == current["version"]

    # A trainer about to rename a finished version into place: complete files under a temp name.
    versions_dir = model_store_dir(stack.model_dir) / "versions"
    temp_version = versions_dir / f".tmp-backup-test-{os.getpid()}"
    shutil.copytree(versions_dir / current["version"], temp_version)

    stop = threading.Event()
    statuses: list[int] = []
    activations: list[int] = []

    def predict() -> None:
        session = requests.Session()
        while not stop.is_set():
            statuses.append(session.post(stack.url + "/predict", json=BOOK_REQUEST, timeout=10).status_code)

    def activate() -> None:
        # Rewrites current.json (same version, new activated_at) through the control worker.
        session = requests.Session()
        while not stop.is_set():
            response = session.post(
                f"{stack.url}/models/{current['version']}/activate", headers=stack.admin(), timeout=30
            )
            activations.append(response.status_code)

    threads = [threading.Thread(target=predict), threading.Thread(target=activate)]
    backups = tmp_path / "backups"
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(statuses) >= 5 and len(activations) >= 1, 30, what="traffic and activations")
        created = make("backup", f"DATA_DIR={stack.native.data_dir}", f"BACKUP_DIR={backups}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        shutil.rmtree(temp_version, ignore_errors=True)
    assert created.returncode == 0, created.stdout + created.stderr
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert activations and set(activations) <= {200, 202}, sorted(set(activations))

    (archive,) = backups.glob("tpotserve-*.tar.gz")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert not [name for name in names if ".tmp" in name]
    assert f"models/models/{MODEL}/current.json" in names
    assert manifest["format_version"] == 4 and manifest["default_model"] == MODEL
    model = manifest["models"][MODEL]
    assert model["pointer"]["version"] == current["version"]
    assert model["pointer"]["sha256"] == current["sha256"]
    assert manifest["signing_key"] is True
    assert dataset["id"] in {d["id"] for d in manifest["datasets"]}
    archived_versions = {v["version"] for v in model["versions"]}

    # A new, empty data dir, restored with the documented command.
    restored_dir = tmp_path / "restored"
    restored = make("restore", f"DATA_DIR={restored_dir}", f"BACKUP={archive}")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert (model_store_dir(restored_dir / "models") / "current.json").exists()
    assert (restored_dir / "signing.key").read_text() == SIGNING_KEY
    assert stat.S_IMODE((restored_dir / "signing.key").stat().st_mode) == 0o600

    # A second stack on it, signing with the restored key file as `make run` would (no MODEL_SIGNING_KEY).
    monkeypatch.delenv("MODEL_SIGNING_KEY", raising=False)
    second = NativeStack(data_dir=restored_dir, gateway_port=free_port(), env={"API_WORKERS": "1"})
    try:
        second.start(services=("api", "nginx"))
        assert second.signing_key() == SIGNING_KEY
        url = second.gateway_url
        served = requests.get(url + "/models/current", timeout=10)
        assert served.status_code == 200, served.text
        assert served.json()["version"] == current["version"]
        assert served.json()["sha256"] == current["sha256"]
        answer = requests.post(url + "/predict", json=BOOK_REQUEST, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected
        listed = requests.get(url + "/models", timeout=10).json()
        assert listed["current"] == current["version"]
        assert {v["version"] for v in listed["versions"]} == archived_versions
        restored_dataset = requests.get(f"{url}/datasets/{dataset['id']}", timeout=10)
        assert restored_dataset.status_code == 200, restored_dataset.text
        assert restored_dataset.json()["sha256"] == dataset["sha256"]
    finally:
        second.stop()


def test_restore_refuses_the_data_dir_of_a_running_stack_and_leaves_it_untouched(
    stack: LiveStack, tmp_path: Path
) -> None:
    # The compose form: MODEL_DIR and DATASET_DIR from the environment, the archive on stdout.
    env = {
        **os.environ,
        "MODEL_DIR": str(stack.model_dir),
        "DATASET_DIR": str(stack.native.data_dir / "datasets"),
    }
    created = subprocess.run(
        [sys.executable, "-m", "tpotserve.backup", "create", "-"],
        cwd=REPO, env=env, capture_output=True, timeout=120, check=False,
    )
    assert created.returncode == 0, created.stderr.decode()
    archive = tmp_path / "stream.tar.gz"
    archive.write_bytes(created.stdout)

    store_dir = model_store_dir(stack.model_dir)
    pointer_before = (store_dir / "current.json").read_bytes()
    versions_before = sorted(p.name for p in (store_dir / "versions").iterdir())
    refused = make("restore", f"DATA_DIR={stack.native.data_dir}", f"BACKUP={archive}")
    assert refused.returncode != 0
    assert f"already holds a model store of model '{MODEL}'" in refused.stderr and "--force" in refused.stderr
    assert (store_dir / "current.json").read_bytes() == pointer_before
    assert sorted(p.name for p in (store_dir / "versions").iterdir()) == versions_before
    assert not list(stack.model_dir.rglob(".restore-*"))
    assert stack.predict_book().status_code == 200
