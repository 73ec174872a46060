"""Gunicorn settings, derived from the one Settings object.

Used as ``gunicorn --config python:tpotserve_api.gunicorn_config`` by both
the container and the native launcher.
"""

import os
import shutil
import tempfile
from pathlib import Path

from tpotserve.settings import load_settings

_settings = load_settings()

bind = [_settings.api_bind]
# Worker type, count and threads: measured with bench/ (docs/performance.md). On a
# CPU-bound predict path, sync workers (about one per core) answer the most requests
# with the flattest tail; threads share one GIL, and a gthread worker keeps nginx's
# keep-alive connections, so one busy worker can end up holding all of them.
workers = _settings.api_workers
worker_class = _settings.api_worker_class
threads = _settings.api_threads
# One BLAS/OpenMP thread per worker unless configured: N workers x a pool per core
# would oversubscribe the cores. Gunicorn sets these in each worker before it imports
# the app (so before numpy loads OpenBLAS/OpenMP, which read them once).
raw_env = [
    f"{name}={_settings.api_blas_threads}"
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
]
# Workers load the model before they accept requests; import tpot alone takes seconds.
timeout = 60
graceful_timeout = 20
# No preload: each worker builds its own app and model holder after the fork,
# so a respawned worker reads the pointer instead of inheriting a stale model.
preload_app = False
# Heartbeat files on tmpfs: a container's overlay filesystem can stall them.
worker_tmp_dir = "/dev/shm"
# The app logs one JSON line per request (tpotserve_api.app); Gunicorn's own
# access log would only repeat it without the model version.
accesslog = None
errorlog = "-"
# No gunicornc control socket: nothing here uses it, and its default path is under
# $HOME, read-only in the container and shared by every instance of a native run.
control_socket_disable = True

# --- metrics: prometheus-client's multiprocess mode ------------------------------
# Each worker writes its metric values to files in one shared directory and the
# worker answering GET /metrics sums them (tpotserve_api.metrics). prometheus-client
# reads the variable when it is imported, so it is set here, in the master, before
# any worker is forked (preload_app is off: workers import the app after the fork).
_own_metrics_dir = _settings.prometheus_multiproc_dir is None
_metrics_dir = Path(
    _settings.prometheus_multiproc_dir or tempfile.mkdtemp(prefix="tpotserve-metrics-")
).resolve()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)


def on_starting(server) -> None:  # noqa: ANN001 - gunicorn's hook signature
    """In the master, before the first worker: start from no metric files.

    A restart reuses the directory (natively under DATA_DIR); files of the
    processes of a previous run would otherwise be counted again. Only
    prometheus-client's own ``*.db`` files are removed.
    """
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    """In the master, when a worker exits (or is killed): drop its live gauges.

    Its counters and histograms stay: what it served still counts.
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(_metrics_dir))


def on_exit(server) -> None:  # noqa: ANN001 - gunicorn's hook signature
    """A temp directory made above goes with the master; a configured one stays (emptied at start)."""
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


# --- garbage collector: the loaded app and model out of its way --------------------------
def post_worker_init(worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    """In each worker, once the app (tpot, scikit-learn, the model) is loaded: move
    every object alive now out of the collector's generations (``gc.freeze``).

    A 10,000-row request allocates ~40,000 containers; that triggers full collections,
    which otherwise walk the ~300,000 objects of the loaded libraries every time:
    100-200 ms pauses in a ~50 ms request (bench/, docs/performance.md). Frozen objects
    are still freed by reference counting; only a reference cycle among them would stay.
    """
    import gc

    gc.collect()
    gc.freeze()
