"""The three servers under test, each on free loopback ports, serving one joblib file.

- :class:`ProductServer`: the product's native stack (native.stack.NativeStack):
  Redis, the API under Gunicorn, nginx in front; the model written into its store
  as the trainer writes one, and /predict reached through nginx.
- :class:`BookServer`: bench/book_app.py on the Flask development server.
- :class:`MLServer`: Seldon MLServer with its scikit-learn runtime, from its own
  venv under the work directory (installed on first use; skipped with a reason
  when that fails).

Each knows how to encode a request body for rows, how to check an answer, and
which processes are its own (for the CPU accounting from /proc).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from native.proc import descendants
from native.processes import start_group, stop_group
from native.stack import NativeStack, free_port

from .micro import publish
from .models import FEATURES, REPO, BenchModel


class ServerUnavailable(RuntimeError):
    """A server that cannot run here (e.g. MLServer not installable): skipped, with this reason."""


class Server:
    name = "server"
    label = "server"

    def __init__(self, work: Path, model: BenchModel) -> None:
        self.work = work
        self.model = model

    # --- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def root_pids(self) -> list[int]:
        raise NotImplementedError

    def pids(self) -> set[int]:
        """Every live process of this server (roots and their descendants)."""
        found: set[int] = set()
        for pid in self.root_pids():
            if Path(f"/proc/{pid}").exists():
                found.add(pid)
                found |= descendants(pid)
        return found

    def config(self) -> dict[str, Any]:
        return {}

    # --- requests --------------------------------------------------------------
    def encode(self, rows: list[dict[str, float]]) -> bytes:
        """The request body for ``rows`` (one row: the server's single-instance form)."""
        if len(rows) == 1:
            return json.dumps(rows[0]).encode()
        return json.dumps({"instances": rows}).encode()

    def check(self, answer: Any, rows: list[dict[str, float]], expected: list[str]) -> None:
        """Raise AssertionError unless ``answer`` predicts ``expected`` for ``rows``."""
        raise NotImplementedError

    def probe(self, rows: list[dict[str, float]], expected: list[str], timeout_s: float = 60.0) -> None:
        """One request, checked: a server that answers wrongly is not benchmarked."""
        status, body = post(self.url, self.encode(rows), timeout_s)
        if status != 200:
            raise AssertionError(f"{self.name}: HTTP {status}: {body[:300]!r}")
        self.check(json.loads(body), rows, expected)


def post(url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(
    ready: Any, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            if ready():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s\n{tail}")


def _stop_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left of it."""
    if proc is not None:
        stop_group(proc, timeout_s=15)


# --- (a) the product ---------------------------------------------------------------
class ProductServer(Server):
    name = "product"
    label = "tpotserve (nginx -> Gunicorn)"

    def __init__(
        self, work: Path, model: BenchModel, env: dict[str, str] | None = None, variant: str | None = None
    ) -> None:
        super().__init__(work, model)
        if variant:  # one of several Gunicorn configurations compared in one run (--product-variants)
            self.name = f"product[{variant}]"
            self.label = f"tpotserve, Gunicorn {variant}"
        self.variant = variant
        self.env = {
            "BOOTSTRAP_ON_START": "false",
            # All load comes from one address: nginx's per-client limit would answer 429.
            "PREDICT_RATE_LIMIT": "1000000r/s",
            "PREDICT_RATE_BURST": "1000000",
            **(env or {}),
        }
        self.stack: NativeStack | None = None

    def data_dir(self) -> Path:
        """This server's own DATA_DIR: servers run side by side, and start() empties it."""
        variant = f"-{self.variant.replace(':', '-')}" if self.variant else ""
        return self.work / f"stack-{self.model.name}{variant}"

    def start(self) -> None:
        data_dir = self.data_dir()
        shutil.rmtree(data_dir, ignore_errors=True)
        self.stack = NativeStack(data_dir=data_dir, gateway_port=free_port(), env=dict(self.env))
        from tpotserve.registry import ModelRegistry

        store = ModelRegistry(self.stack.model_dir, self.stack.signing_key().encode(), "iris").store()
        self.version = publish(store, self.model)
        # Only what serves /predict: Redis (readyz), the API, nginx. No trainer.
        self.stack.start(services=("redis", "api", "nginx"))
        probe = json.dumps({f: 1.0 for f in FEATURES}).encode()
        predict = f"{self.stack.gateway_url}/predict"
        wait_until(lambda: post(predict, probe, 5)[0] == 200, 120, "tpotserve /predict")

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    @property
    def url(self) -> str:
        assert self.stack is not None
        return f"{self.stack.gateway_url}/predict"

    def root_pids(self) -> list[int]:
        assert self.stack is not None
        return [
            self.stack.processes[name].popen.pid for name in ("api", "nginx") if name in self.stack.processes
        ]

    def config(self) -> dict[str, Any]:
        from tpotserve.settings import load_settings

        # What the API's Gunicorn reads: our overrides over the environment over the defaults.
        names = ("api_workers", "api_worker_class", "api_threads", "api_blas_threads")
        given = {k.lower(): v for k, v in {**os.environ, **self.env}.items() if k.lower() in names}
        settings = load_settings(**given)
        return {
            **{name: getattr(settings, name) for name in names},
            "nginx": "upstream keepalive 32, proxy_http_version 1.1",
            "services": ["redis", "api", "nginx"],
            "env": dict(self.env),
        }

    def api_log(self) -> str:
        return self.stack.log_text("api") if self.stack else ""

    def check(self, answer: Any, rows: list[dict[str, float]], expected: list[str]) -> None:
        if len(rows) == 1:
            assert answer["Prediction"] == expected[0], answer
            assert abs(sum(answer["probabilities"].values()) - 1) < 1e-6, answer
        else:
            assert answer["predictions"] == expected, "predictions differ from the pipeline's own"
            assert len(answer["probabilities"]) == len(rows)


# --- (b) the book's app --------------------------------------------------------------
class BookServer(Server):
    name = "book"
    label = "book-style Flask dev server"

    def __init__(self, work: Path, model: BenchModel) -> None:
        super().__init__(work, model)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = work / "logs" / f"book-{model.name}.log"

    def start(self) -> None:
        self.port = free_port()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = start_group(
                [
                    sys.executable,
                    "-m",
                    "bench.book_app",
                    "--model",
                    str(self.model.artifact),
                    "--port",
                    str(self.port),
                ],
                cwd=REPO,
                stdout=out,
            )
        probe = json.dumps({f: 1.0 for f in FEATURES}).encode()
        wait_until(lambda: post(self.url, probe, 5)[0] == 200, 60, "book app", self.proc, self.log)

    def stop(self) -> None:
        _stop_group(self.proc)
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"

    def root_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def config(self) -> dict[str, Any]:
        return {
            "server": "Flask development server (threaded)",
            "per_request": "DataFrame + predict + predict_proba",
        }

    def check(self, answer: Any, rows: list[dict[str, float]], expected: list[str]) -> None:
        if len(rows) == 1:
            assert answer["Prediction"] == expected[0], answer
        else:
            assert answer["predictions"] == expected, "predictions differ from the pipeline's own"


# --- (c) MLServer ------------------------------------------------------------------
MLSERVER_REQUIREMENTS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", "scikit-learn", "TPOT"]
"""MLServer 1.7.1 as installed pulls uvloop 0.23, with which its inference worker crashes.
scikit-learn, TPOT (and through the constraints everything they share with the product)
at the product's pinned versions, so the same joblib file unpickles the same pipeline."""


def mlserver_venv(work: Path, log: Path) -> Path:
    """The MLServer venv under the work directory, installed on first use; its bin/."""
    venv = work / "mlserver-venv"
    lock = REPO / "requirements.lock"
    spec = hashlib.sha256((" ".join(MLSERVER_REQUIREMENTS) + lock.read_text()).encode()).hexdigest()[:16]
    stamp = venv / f".installed-{spec}"
    if stamp.exists():
        return venv / "bin"
    log.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    try:
        with open(log, "ab") as out:
            if not (venv / "bin" / "python").exists():
                subprocess.run([base_python, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
            subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "-c",
                    str(lock),
                    *MLSERVER_REQUIREMENTS,
                ],
                check=True,
                stdout=out,
                stderr=out,
                timeout=1800,
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise ServerUnavailable(f"MLServer could not be installed ({exc}); see {log}") from exc
    for old in venv.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return venv / "bin"


class MLServer(Server):
    name = "mlserver"
    label = "MLServer 1.7.1 (sklearn runtime)"
    MODEL = "bench-model"

    def __init__(self, work: Path, model: BenchModel, parallel_workers: int = 1) -> None:
        super().__init__(work, model)
        self.parallel_workers = parallel_workers
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = work / "logs" / f"mlserver-{model.name}.log"

    def start(self) -> None:
        bin_dir = mlserver_venv(self.work, self.work / "logs" / "mlserver-install.log")
        root = self.work / f"mlserver-{self.model.name}"
        shutil.rmtree(root, ignore_errors=True)
        model_dir = root / self.MODEL
        model_dir.mkdir(parents=True)
        shutil.copyfile(self.model.artifact, model_dir / "model.joblib")
        (model_dir / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": self.MODEL,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib", "version": "v1"},
                }
            )
        )
        self.port = free_port()
        (root / "settings.json").write_text(json.dumps(self.settings()))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = start_group([str(bin_dir / "mlserver"), "start", str(root)], cwd=root, stdout=out)
        ready = f"http://127.0.0.1:{self.port}/v2/models/{self.MODEL}/ready"
        wait_until(
            lambda: urllib.request.urlopen(ready, timeout=2).status == 200,
            180,
            "MLServer",
            self.proc,
            self.log,
        )

    def settings(self) -> dict[str, Any]:
        """settings.json: MLServer's defaults but for loopback ports and no debug logging."""
        return {
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": self.parallel_workers,
            "debug": False,
        }

    def stop(self) -> None:
        _stop_group(self.proc)
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{self.MODEL}/infer"

    def root_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def config(self) -> dict[str, Any]:
        return {
            "parallel_workers": self.parallel_workers,
            "debug": False,
            "outputs": ["predict_proba"],
            "requirements": MLSERVER_REQUIREMENTS,
        }

    def encode(self, rows: list[dict[str, float]]) -> bytes:
        return v2_body(rows)

    def check(self, answer: Any, rows: list[dict[str, float]], expected: list[str]) -> None:
        check_v2(answer, rows, expected, self.model.classes)


# --- the V2 inference protocol, as MLServer and the product's /v2 both speak it -------------
def v2_body(rows: list[dict[str, float]]) -> bytes:
    """One [rows, features] FP64 tensor asking for predict_proba only: one predict_proba call,
    as the product's /predict makes."""
    data = [row[f] for row in rows for f in FEATURES]
    return json.dumps(
        {
            "inputs": [{"name": "input-0", "shape": [len(rows), len(FEATURES)], "datatype": "FP64", "data": data}],
            "outputs": [{"name": "predict_proba"}],
        }
    ).encode()


def check_v2(answer: Any, rows: list[dict[str, float]], expected: list[str], classes: list[str]) -> None:
    (output,) = answer["outputs"]
    assert output["name"] == "predict_proba" and output["shape"][0] == len(rows), output
    width = output["shape"][1]
    data = output["data"]
    got = [classes[max(range(width), key=lambda j: data[i * width + j])] for i in range(len(rows))]
    assert got == expected, "predictions differ from the pipeline's own"


class ProductV2Server(ProductServer):
    """The product again, through its Open Inference Protocol endpoint (same stack, same model)."""

    name = "v2"
    label = "tpotserve V2 /v2/models/iris/infer"

    @property
    def url(self) -> str:
        assert self.stack is not None
        return f"{self.stack.gateway_url}/v2/models/iris/infer"

    def data_dir(self) -> Path:
        # Not the JSON server's: emptying that would pull its stack's files out from under it
        # (a smoke run once got a 502 from the product after the V2 server started).
        return self.work / f"stack-{self.model.name}-v2"

    def start(self) -> None:
        super().start()
        wait_until(lambda: post(self.url, v2_body([{f: 1.0 for f in FEATURES}]), 5)[0] == 200, 60, "tpotserve /v2")

    def encode(self, rows: list[dict[str, float]]) -> bytes:
        return v2_body(rows)

    def check(self, answer: Any, rows: list[dict[str, float]], expected: list[str]) -> None:
        check_v2(answer, rows, expected, self.model.classes)
