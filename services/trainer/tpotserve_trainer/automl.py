"""Every TPOT knob in one place: build the search, run it, return a plain pipeline."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import VotingClassifier
from sklearn.metrics import get_scorer

from tpotserve.errors import TrainingFailed
from tpotserve.offline import disable_tpot_update_check
from tpotserve.schema import TrainingPayload
from tpotserve.settings import Settings

disable_tpot_update_check()
import tpot  # noqa: E402 - the update check must be disabled first

log = logging.getLogger(__name__)

NO_INDIVIDUALS = "No individuals could be evaluated"
"""The start of what TPOT raises (a bare Exception) when none of its first population scored."""


class NoPipeline(TrainingFailed):
    """TPOT ran and has nothing to offer: every candidate failed or timed out.

    Not a failure of the training when baselines were fitted: the best of them is
    published and the leaderboard says TPOT found nothing (``jobs._train``).
    ``evaluated`` and ``score_column``: what TPOT tried, for the leaderboard's counts."""

    def __init__(self, message: str, evaluated: pd.DataFrame | None = None, score_column: str = "") -> None:
        super().__init__(message)
        self.evaluated = evaluated
        self.score_column = score_column


@dataclass
class SearchResult:
    """A fitted scikit-learn pipeline and what TPOT found out about it.

    ``nothing_found`` builds the result of a search with no pipeline (``NoPipeline``)."""

    pipeline: Any
    classes: list[Any] | None
    cv_score: float | None
    pipeline_text: str | None
    evaluated_pipelines: int
    evaluated: Any = None
    """TPOT's ``evaluated_individuals`` (a DataFrame), for the leaderboard."""
    selected_label: Any = None
    """The row of ``evaluated`` that TPOT picked."""
    score_column: str = ""
    label_encoded: bool = False
    """True when the pipeline predicts 0..n-1 and ``classes`` maps them to labels.

    New searches never produce one (see _with_own_labels); artifacts published
    before that carry it in their metadata, and the API and the gate honour it."""
    failure: str | None = None
    """Why TPOT has no pipeline (then ``pipeline`` is None)."""

    @classmethod
    def nothing_found(cls, error: NoPipeline) -> SearchResult:
        return cls(pipeline=None, classes=None, cv_score=None, pipeline_text=None, evaluated_pipelines=0,
                   evaluated=error.evaluated, score_column=error.score_column, failure=error.message)


Progress = Callable[[dict[str, Any]], None]


# --- where a search runs: TPOT's own local cluster, or an existing Dask cluster ----
@dataclass
class Compute:
    """Where a search runs. ``client`` None: TPOT starts its own LocalCluster of ``n_jobs`` processes."""

    client: Any = None
    n_jobs: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    """Recorded in the job's progress, its result and the version's meta.json (``compute``)."""

    def workers_now(self) -> int | None:
        """The cluster's current worker count (None when local, or the scheduler cannot say)."""
        if self.client is None:
            return None
        try:
            return len(self.client.scheduler_info(n_workers=-1)["workers"])
        except Exception:  # noqa: BLE001 - only for reporting
            return None


class _SchedulerCluster:
    """The little of ``client.cluster`` that TPOT 1.1.0 reads, for a Client made from an address.

    TPOT 1.1.0 sizes its queue of in-flight pipelines with
    ``len(client.cluster.workers)`` (tpot/utils/eval_utils.py and the
    evolvers). A Client connected to a scheduler's address has
    ``cluster = None``, so TPOT crashes before evaluating anything. This view
    answers with the scheduler's *current* workers, read again each time
    (TPOT reads it once per generation), so workers that join or leave are
    counted. distributed's Client itself reads ``cluster.status`` (heartbeat,
    reconnect): always running; ``close`` is a no-op, the cluster is not ours.
    Our single-threaded workers make "workers" equal to "threads".
    Remove this once TPOT reads the worker count from the client itself.
    """

    def __init__(self, client: Any) -> None:
        from distributed.core import Status

        self._client = client
        self.status = Status.running

    @property
    def workers(self) -> dict[str, Any]:
        try:
            return dict(self._client.scheduler_info(n_workers=-1)["workers"])
        except Exception:  # noqa: BLE001 - a lost scheduler: nothing to submit to
            return {}

    def close(self) -> None:
        return None


@contextmanager
def compute_for(settings: Settings, payload: TrainingPayload) -> Iterator[Compute]:
    """The compute a search uses: the Dask cluster at DASK_SCHEDULER_ADDRESS, else TPOT's local default.

    With a cluster: connect (failing after DASK_CONNECT_TIMEOUT_S with a clear
    TrainingFailed, before anything is trained), wait up to DASK_WORKER_WAIT_S
    for a first worker (TPOT stops with a bare StopIteration on zero workers),
    and set n_jobs to the cluster's thread count: with a client TPOT still uses
    n_jobs for its per-generation timeout and pruning. The client is created
    here, inside the work-horse, and always closed here (TPOT never closes a
    client it was given); the cluster itself is left running.
    """
    address = settings.dask_scheduler_address
    if not address:
        yield Compute(None, payload.n_jobs, {"mode": "local", "n_jobs": payload.n_jobs})
        return
    from distributed import Client

    try:
        # The default client too: TPOT's distributed.as_completed() looks it up.
        client = Client(address, timeout=f"{settings.dask_connect_timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise TrainingFailed(
            f"the Dask scheduler at {address} is unreachable ({type(exc).__name__}: {exc}); "
            "nothing was trained and the served model is unchanged"
        ) from exc
    try:
        try:
            client.wait_for_workers(1, timeout=settings.dask_worker_wait_s)
        except (OSError, TimeoutError) as exc:
            raise TrainingFailed(
                f"the Dask scheduler at {address} has no workers (waited {settings.dask_worker_wait_s:g} s); "
                "nothing was trained and the served model is unchanged"
            ) from exc
        _check_workers(client, address)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
        client.cluster = _SchedulerCluster(client)
        yield Compute(
            client,
            threads,
            {"mode": "dask", "scheduler": address, "workers": len(workers), "threads": threads,
             "n_jobs": threads},
        )
    finally:
        client.cluster = None  # the view is not a cluster distributed may close
        try:
            client.close(timeout=5)
        except Exception:  # noqa: BLE001 - a dead scheduler must not turn a result into a failure
            log.warning("closing the Dask client failed", exc_info=True)


def _progress_evolver(report: Progress, planned_generations: int) -> type:
    """TPOT's evolver, reporting after every evaluated generation.

    TPOT 1.1 accepts a ``callback`` argument but never calls it; the evolver's
    ``evaluate_population`` runs once per generation (the initial population
    included), which is the natural place to read the progress.
    """

    class ProgressEvolver(tpot.evolvers.BaseEvolver):
        def evaluate_population(self) -> Any:
            result = super().evaluate_population()
            try:
                report(_generation_summary(self, planned_generations))
            except Exception:  # noqa: BLE001 - progress must never break a search
                log.exception("progress report failed")
            return result

    return ProgressEvolver


@contextmanager
def _reporting(report: Progress | None, planned_generations: int) -> Iterator[None]:
    """Make TPOT's fit() build the reporting evolver.

    fit() reads ``tpot.evolvers.BaseEvolver`` each time it runs, and no
    parameter selects another class, so swap the module attribute for the
    duration of the fit. A work-horse runs one job, so nothing else sees it.
    """
    if report is None:
        yield
        return
    original = tpot.evolvers.BaseEvolver
    tpot.evolvers.BaseEvolver = _progress_evolver(report, planned_generations)
    try:
        yield
    finally:
        tpot.evolvers.BaseEvolver = original


def _generation_summary(evolver: Any, planned: int) -> dict[str, Any]:
    frame = evolver.population.evaluated_individuals
    column = evolver.objective_names[0]
    scores = pd.to_numeric(frame[column], errors="coerce")
    valid = scores.dropna()
    weight = evolver.objective_function_weights[0]
    best = None if valid.empty else float(valid.max() if weight > 0 else valid.min())
    return {
        "generation": int(evolver.generation) + 1,
        "generations_planned": planned,
        "pipelines_evaluated": int(valid.size),
        "pipelines_failed": int(len(frame) - valid.size),
        "best_cv_score": best,
    }


def _worker_versions() -> dict[str, str]:
    """Runs on each Dask worker: import TPOT now and say which versions it has."""
    import sklearn

    disable_tpot_update_check()
    import tpot as worker_tpot

    return {"tpot": worker_tpot.__version__, "scikit-learn": sklearn.__version__}


def _check_workers(client: Any, address: str) -> None:
    """Import TPOT on every worker before the search, and insist on the trainer's versions.

    A fresh worker's first task would otherwise spend seconds importing TPOT
    against its pipeline's max_eval_time_mins; and pipelines pickled by one
    scikit-learn and run by another fail in ways TPOT only counts as invalid.
    """
    import sklearn

    ours = {"tpot": tpot.__version__, "scikit-learn": sklearn.__version__}
    try:
        theirs = client.run(_worker_versions)
    except Exception as exc:  # noqa: BLE001 - e.g. tpot missing on the workers
        raise TrainingFailed(
            f"the Dask workers at {address} cannot run TPOT ({type(exc).__name__}: {exc}); "
            "build them from the trainer's image"
        ) from exc
    different = {worker: found for worker, found in theirs.items() if found != ours}
    if different:
        raise TrainingFailed(
            f"the Dask workers at {address} run other versions than this trainer ({ours}): {different}; "
            "build them from the trainer's image"
        )


def build_estimator(payload: TrainingPayload, compute: Compute | None = None, cv: Any = None) -> Any:
    """The TPOT estimator for a payload; the only place TPOT's options are set.
    ``cv``: the folds (a splitter shared with the baselines); ``payload.cv`` folds when None."""
    cls = tpot.TPOTClassifier if payload.task == "classification" else tpot.TPOTRegressor
    compute = compute or Compute(None, payload.n_jobs)
    cluster_options: dict[str, Any] = {}
    if compute.client is not None:
        cluster_options = {
            "client": compute.client,
            # TPOT scatters X and y to one worker by default: kill that worker and
            # every later pipeline fails silently. Sent with each task instead, a
            # task whose worker died is simply rescheduled (see docs/scaling.md).
            "scatter": False,
            # TPOT 1.1's memory="auto" is broken; no caching across the cluster.
            "memory": None,
        }
    return cls(
        scorers=[payload.scoring],
        scorers_weights=[1],
        cv=cv if cv is not None else payload.cv,
        max_time_mins=payload.max_time_mins,
        # One pipeline may use half the budget (TPOT's default is 10 minutes), but
        # at least 30 s: on a busy machine a tiny budget must not time out every
        # pipeline of the first generation ("No individuals could be evaluated").
        max_eval_time_mins=max(payload.max_time_mins / 2, 0.5),
        generations=payload.generations,
        population_size=payload.population_size,
        n_jobs=compute.n_jobs,
        random_state=payload.random_state,
        verbose=0,
        **cluster_options,
    )


def search(
    payload: TrainingPayload,
    X: pd.DataFrame,
    y: pd.Series,
    report: Progress | None = None,
    compute: Compute | None = None,
    cv: Any = None,
) -> SearchResult:
    """Run TPOT on (X, y) and return the best pipeline, refit to predict y's own labels."""
    compute = compute or Compute(None, payload.n_jobs)
    estimator = build_estimator(payload, compute, cv)
    features = X.to_numpy(dtype=float)
    target = y.to_numpy()
    with warnings.catch_warnings():
        # "Both generations and max_time_mins are set" and the label-encoding notice.
        warnings.simplefilter("ignore", UserWarning)
        try:
            with _reporting(report, payload.generations):
                estimator.fit(features, target)
        except Exception as exc:  # noqa: BLE001 - TPOT raises bare Exceptions for bad data
            if str(exc).startswith(NO_INDIVIDUALS):
                raise _no_pipeline(estimator, compute) from exc
            raise TrainingFailed(
                f"TPOT could not fit: {type(exc).__name__}: {exc}{_cluster_note(compute)}"
            ) from exc
    fitted = getattr(estimator, "fitted_pipeline_", None)
    if fitted is None:
        raise _no_pipeline(estimator, compute)

    pipeline, classes = fitted, None
    if payload.task == "classification":
        pipeline, classes = _with_own_labels(fitted, estimator, features, target)

    best = estimator.selected_best_score
    score_column = estimator.objective_names_for_selection[0]
    cv_score = float(best[score_column])
    evaluated = estimator.evaluated_individuals
    return SearchResult(
        pipeline=pipeline,
        classes=classes,
        cv_score=cv_score,
        pipeline_text=str(fitted),
        evaluated_pipelines=int(pd.to_numeric(evaluated[score_column], errors="coerce").notna().sum()),
        evaluated=evaluated,
        selected_label=getattr(best, "name", None),
        score_column=score_column,
    )


def _no_pipeline(estimator: Any, compute: Compute) -> NoPipeline:
    """What a search that scored no pipeline tried, in words and as TPOT's table (when it
    can still build it: an exception in the first generation leaves it unbuilt)."""
    try:
        evaluated, column = estimator.make_evaluated_individuals(), estimator.objective_names[0]
    except Exception:  # noqa: BLE001 - no evolver, no population: no counts rather than a second error
        evaluated, column = None, ""
    tried = ""
    if evaluated is not None and "Eval Error" in evaluated:
        errors = evaluated["Eval Error"].astype("string")
        tried = (f" ({len(evaluated)} tried: {int((errors == 'INVALID').sum())} failed, "
                 f"{int((errors == 'TIMEOUT').sum())} timed out, the rest cut off by max_time_mins)")
    return NoPipeline(f"TPOT scored no pipeline in its budget{tried}{_cluster_note(compute)}", evaluated, column)


def _cluster_note(compute: Compute) -> str:
    """Why a search on a cluster may have failed: its workers went away."""
    if compute.client is None:
        return ""
    now = compute.workers_now()
    if now == 0:
        return f"; the Dask cluster at {compute.info.get('scheduler')} has no workers left"
    if now is None:
        return f"; the Dask scheduler at {compute.info.get('scheduler')} is no longer reachable"
    return ""


def holdout_score(
    model: Any, X: pd.DataFrame, y: pd.Series, scoring: str, classes: list[Any] | None, label_encoded: bool
) -> float:
    """``scoring`` of a fitted pipeline on the holdout rows (greater is better, as in scikit-learn)."""
    target = y.to_numpy()
    if label_encoded and classes is not None:
        # The pipeline predicts 0..n-1; compare it with the encoded truth.
        index = {label: i for i, label in enumerate(classes)}
        target = np.array([index[plain(v)] for v in target])
    return float(get_scorer(scoring)(model, X.to_numpy(dtype=float), target))


def _with_own_labels(fitted: Any, estimator: Any, X: np.ndarray, y: np.ndarray) -> tuple[Any, list[Any]]:
    """A pipeline whose predict() returns y's own labels, and its class order.

    TPOT label-encodes string targets (XGBoost needs 0..n-1) and its
    fitted_pipeline_ then predicts integers. Refit a clone on the real labels
    so that ``joblib.load(path).predict(X)`` gives class names. A pipeline that
    insists on encoded labels is refit inside scikit-learn's own
    VotingClassifier with that pipeline as its only voter: it encodes the labels
    itself, decodes its predictions, and predicts exactly what the lone voter
    predicts (its probabilities are the voter's, averaged over one). It is a
    plain scikit-learn class, so the artifact still unpickles without this
    package.
    """
    encoder = getattr(estimator, "label_encoder_", None)
    if encoder is None:
        return fitted, [plain(c) for c in fitted.classes_]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            relabeled = clone(fitted).fit(X, y)
        except Exception as exc:  # noqa: BLE001 - e.g. XGBoost refuses string labels
            log.info("refitting inside a VotingClassifier that decodes labels (%s)", exc)
            voting = "soft" if hasattr(fitted, "predict_proba") else "hard"
            relabeled = VotingClassifier([("tpot", clone(fitted))], voting=voting).fit(X, y)
    return relabeled, [plain(c) for c in relabeled.classes_]


def plain(value: Any) -> Any:
    """numpy scalars -> JSON-able Python values."""
    return value.item() if hasattr(value, "item") else value


def library_versions() -> dict[str, str]:
    """The versions a reader needs to unpickle the artifact."""
    import platform

    import joblib
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "tpot": tpot.__version__,
        "joblib": joblib.__version__,
        "numpy": np.__version__,
    }
