"""The models the benchmark serves, each as one joblib file that all servers load.

- ``forest``: StandardScaler + RandomForestClassifier(100) on iris, the heavy one.
- ``tpot``: a pipeline the project's trainer produced (``tpotserve_trainer.jobs.retrain``
  on the bundled iris, seeded), trained once and cached under the work directory.

Both predict the book's four iris features and answer species names, so one set of
request bodies fits every model and every server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from tpotserve.clock import utc_iso
from tpotserve.model_meta import ModelMeta

REPO = Path(__file__).resolve().parent.parent
FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
BOOK_ROW = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}
MODEL_NAMES = ("forest", "tpot")

# The trainer's budget for the benchmark's TPOT model: small, seeded, cached.
TPOT_REQUEST = {"dataset": "iris", "max_time_mins": 1.0, "generations": 3, "population_size": 8}
TPOT_SEED = "42"


@dataclass
class BenchModel:
    name: str
    artifact: Path
    """The joblib file every server loads (byte for byte the same)."""
    meta: dict[str, Any]
    """Metadata as the trainer writes it (features, classes, task ...)."""
    description: str

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def load(self) -> Any:
        return joblib.load(self.artifact)


def iris_xy() -> tuple[Any, Any]:
    from tpotserve.datasets import iris_frame

    frame = iris_frame()
    return frame[FEATURES], frame["species"]


def forest_model(work: Path) -> BenchModel:
    """StandardScaler + RandomForestClassifier(100), fitted on iris (seeded: the same trees every run)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from tpotserve.schema import feature_schema

    X, y = iris_xy()
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("forest", RandomForestClassifier(n_estimators=100, random_state=0))]
    ).fit(X.to_numpy(dtype=float), y.to_numpy())
    directory = work / "models" / "forest"
    directory.mkdir(parents=True, exist_ok=True)
    artifact = directory / "model.joblib"
    joblib.dump(pipeline, artifact)
    meta = ModelMeta(
        created_at=utc_iso(),
        task="classification",
        dataset="iris",
        target="species",
        features=feature_schema(X),
        classes=[str(c) for c in pipeline.classes_],
        label_encoded=False,
        cv_score=None,
        scoring="accuracy",
        training_rows=len(X),
        pipeline=str(pipeline),
        reason="benchmark",
    ).to_json()
    return BenchModel("forest", artifact, meta, "StandardScaler + RandomForestClassifier(100) on iris")


def tpot_model(work: Path, log: Path) -> BenchModel:
    """The trainer's own output on iris: run once, then reused from ``work/tpot-store``."""
    from tpotserve.registry import ModelRegistry

    store_dir = work / "tpot-store"
    key = b"bench-tpot-store"
    store = ModelRegistry(store_dir, key, "iris").store()  # the default model, which the trainer trains
    pointer = store.read_pointer_quietly()
    if pointer is None:
        _train_tpot(store_dir, key, log)
        pointer = store.read_pointer_quietly()
        if pointer is None:
            raise RuntimeError(f"the trainer published no model; see {log}")
    meta = store.read_meta(pointer.version)
    path = store.verified_artifact(pointer.version, pointer.sha256)
    directory = work / "models" / "tpot"
    directory.mkdir(parents=True, exist_ok=True)
    artifact = directory / "model.joblib"
    shutil.copyfile(path, artifact)
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "signature", "version")}
    return BenchModel("tpot", artifact, meta, f"TPOT (trainer, iris): {meta.get('pipeline', '?')}")


def _train_tpot(store_dir: Path, key: bytes, log: Path) -> None:
    """Run tpotserve_trainer.jobs.retrain in a child process with its own environment
    (and a Redis of its own for the trainer's locks), as the RQ worker would."""
    from native.stack import free_port, require_binary

    log.parent.mkdir(parents=True, exist_ok=True)
    redis_port = free_port()
    redis_dir = store_dir.parent / "tpot-redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    redis = subprocess.Popen(
        [
            require_binary("redis-server"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(redis_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_port(redis_port)
        _run_retrain(store_dir, key, log, f"redis://127.0.0.1:{redis_port}/0")
    finally:
        redis.terminate()
        redis.wait(timeout=10)


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _run_retrain(store_dir: Path, key: bytes, log: Path, redis_url: str) -> None:
    env = dict(os.environ)
    env.update(
        {
            "MODEL_DIR": str(store_dir),
            "DATASET_DIR": str(store_dir.parent / "datasets"),
            "MODEL_SIGNING_KEY": key.decode(),
            "TPOT_RANDOM_STATE": TPOT_SEED,
            "REDIS_URL": redis_url,
        }
    )
    code = (
        "import json, sys\n"
        "from tpotserve.datasets import DatasetStore\n"
        "from tpotserve.schema import parse_retrain_request\n"
        "from tpotserve.settings import load_settings\n"
        "from tpotserve.training import plan_training\n"
        "from tpotserve_trainer.jobs import retrain\n"
        "settings = load_settings()\n"
        f"request = parse_retrain_request(json.loads({json.dumps(json.dumps(TPOT_REQUEST))}))\n"
        "datasets = DatasetStore.from_settings(settings)\n"
        "payload = plan_training(request, settings, datasets, reason='benchmark')\n"
        "print(json.dumps(retrain(payload.model_dump()), default=str))\n"
    )
    with open(log, "ab") as out:
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=900,
        )


def build(names: list[str], work: Path) -> list[BenchModel]:
    builders = {
        "forest": lambda: forest_model(work),
        "tpot": lambda: tpot_model(work, work / "logs" / "tpot-train.log"),
    }
    unknown = sorted(set(names) - set(builders))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {sorted(builders)}")
    return [builders[name]() for name in names]
