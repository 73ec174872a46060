"""The trainer's bridge to an existing Dask cluster (tpotserve_trainer.automl.compute_for).

An in-process Dask cluster (threads, no subprocesses) stands in for the
scheduler at DASK_SCHEDULER_ADDRESS; no TPOT search runs here (the
integration tests in tests/integration/test_scaling.py run real ones).
"""

from __future__ import annotations

from functools import partial
import time
from collections.abc import Iterator

import pytest
from distributed import Client, LocalCluster
from distributed.core import Status

from tpotserve.errors import TrainingFailed
from tpotserve.settings import Settings
from tpotserve_trainer import automl
from tpotserve_trainer.automl import _SchedulerCluster

from tests.unit.payloads import training_payload


payload = partial(training_payload, n_jobs=3)  # a local cluster of three


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0", silence_logs=50
    ) as local:
        yield local


def test_a_client_made_from_an_address_has_no_cluster(cluster: LocalCluster) -> None:
    """Why the adapter exists: TPOT 1.1 reads len(client.cluster.workers)."""
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        assert client.cluster is None


def test_the_view_counts_the_schedulers_current_workers(cluster: LocalCluster) -> None:
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        view = _SchedulerCluster(client)
        assert len(view.workers) == 2
        assert view.status == Status.running
        assert view.close() is None
        cluster.scale(3)
        client.wait_for_workers(3, timeout=20)
        assert len(view.workers) == 3  # read again each time, not cached
        cluster.scale(2)
        deadline = time.monotonic() + 20
        while len(view.workers) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(view.workers) == 2


def test_tpot_sizes_its_queue_from_the_view(cluster: LocalCluster) -> None:
    """The exact line TPOT 1.1 crashes on with a bare Client runs with the view."""
    import tpot.utils.eval_utils as eval_utils

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        with pytest.raises(AttributeError):
            eval_utils.parallel_eval_objective_list([], [], client=client, n_expected_columns=1)
        client.cluster = _SchedulerCluster(client)
        try:
            eval_utils.parallel_eval_objective_list([], [], client=client, n_expected_columns=1)
        finally:
            client.cluster = None


def test_unset_address_keeps_tpots_local_default() -> None:
    with automl.compute_for(Settings(), payload(n_jobs=3)) as compute:
        assert compute.client is None
        assert compute.n_jobs == 3
        assert compute.info == {"mode": "local", "n_jobs": 3}
        assert compute.workers_now() is None
    estimator = automl.build_estimator(payload(n_jobs=3), compute)
    assert estimator.client is None and estimator.n_jobs == 3


def test_a_cluster_sets_client_threads_and_no_scatter(cluster: LocalCluster) -> None:
    settings = Settings(dask_scheduler_address=cluster.scheduler_address)
    with automl.compute_for(settings, payload(n_jobs=1)) as compute:
        assert compute.client is not None
        assert isinstance(compute.client.cluster, _SchedulerCluster)
        # n_jobs still drives TPOT's per-generation timeout and pruning: the cluster's threads.
        assert compute.n_jobs == 2
        assert compute.info == {"mode": "dask", "scheduler": cluster.scheduler_address,
                                "workers": 2, "threads": 2, "n_jobs": 2}
        assert compute.workers_now() == 2
        estimator = automl.build_estimator(payload(), compute)
        assert estimator.client is compute.client
        assert estimator.n_jobs == 2
        assert estimator.tpotestimator_kwargs.get("scatter") is False
        assert estimator.memory is None
        client = compute.client
    # Ours to close (TPOT never closes a client it was given), and detached from the view first.
    assert client.cluster is None
    assert client.status in ("closed", "closing")


def test_an_unreachable_scheduler_fails_at_once_with_a_clear_reason() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(dask_scheduler_address=address, dask_connect_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(TrainingFailed) as caught:
        with automl.compute_for(settings, payload()):
            pytest.fail("must not get here")
    assert time.monotonic() - started < 10
    assert address in caught.value.message and "unreachable" in caught.value.message
    assert "served model is unchanged" in caught.value.message


def test_a_scheduler_without_workers_fails_after_the_wait() -> None:
    with LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0",
                      silence_logs=50) as empty:
        settings = Settings(dask_scheduler_address=empty.scheduler_address, dask_worker_wait_s=1)
        with pytest.raises(TrainingFailed, match="has no workers"):
            with automl.compute_for(settings, payload()):
                pytest.fail("must not get here")


def test_an_empty_address_means_unset() -> None:
    assert Settings(dask_scheduler_address="").dask_scheduler_address is None


def test_workers_with_other_versions_are_refused(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cluster's workers are threads of this process: they run the patched function.
    monkeypatch.setattr(automl, "_worker_versions", lambda: {"tpot": "0.12.2", "scikit-learn": "1.9.1"})
    settings = Settings(dask_scheduler_address=cluster.scheduler_address)
    with pytest.raises(TrainingFailed, match="other versions than this trainer"):
        with automl.compute_for(settings, payload()):
            pytest.fail("must not get here")


def test_every_worker_imports_tpot_before_the_search(cluster: LocalCluster) -> None:
    import sklearn
    import tpot

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        found = client.run(automl._worker_versions)
    assert len(found) == 2
    assert set(map(str, [v for v in found.values()][0].values())) == {tpot.__version__, sklearn.__version__}
