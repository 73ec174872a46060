"""The live stack keeps its OpenAPI contract: Schemathesis fuzzes every operation
through nginx and checks that no answer is a server error and that every answer's
status code, content type, headers and body are the ones /openapi.json documents.

Harmless to the tests that run after it (pytest runs the files alphabetically:
test_lifecycle, test_predict, test_retraining... come later and share the stack):
- model versions: the fuzzer only ever activates versions that do not exist (404);
  the one real activation below re-activates the version already current (a no-op);
- trainings: a valid /retrain body the fuzzer happens to send is made "promote": "never"
  (nothing it trains is ever served) and canceled at once; at the end the module stops
  every training it enqueued (a safety net: DELETE races the worker) and waits for an idle queue;
- rate limits: /retrain calls are paced at RETRAIN_RATE_LIMIT, so nginx's burst stays full;
- uploads: a generated CSV that passes the data rules is stored as a new data set,
  which no other test counts.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.registry import StartedJobRegistry

from tpotserve import jobs

from tests.contract_checks import CHECKS

from .conftest import BOOK_REQUEST, LiveStack, wait_for

MAX_EXAMPLES = 25  # generated cases per operation, on top of the examples and coverage phases
SEED = 20261127  # reproducible runs; change it to explore other inputs
TERMINAL = {"finished", "failed", "canceled"}
FEATURES = list(BOOK_REQUEST)
FUZZED: defaultdict[str, Counter] = defaultdict(Counter)  # operation -> "METHOD status" sent -> answers

CONFIG = {
    "seed": SEED,
    "suppress-health-check": ["all"],
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "no-shrink": True,
        "database": "none",  # no .hypothesis/ directory in the repository
        # The admin key is sent with every request instead: auth failures are tested elsewhere.
        "with-security-parameters": False,
    },
    "phases": {"stateful": {"enabled": False}},
}


@pytest.fixture(scope="module")
def training_jobs(stack: LiveStack) -> Iterator[set[str]]:
    """Ids of the trainings this module enqueued; every one has ended when the module is done."""
    seen: set[str] = set()
    yield seen
    _stop_trainings(stack, seen)


def _stop_trainings(stack: LiveStack, job_ids: set[str], timeout_s: float = 180) -> None:
    """Cancel or stop each job until all have ended and the training queue stays idle.

    A job answered 200 "canceled" may still start (see the xfail below), so one DELETE
    is not enough: look again until nothing of ours is queued or running.
    """
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 2:
        assert time.monotonic() < deadline, f"trainings {sorted(job_ids)} did not end in {timeout_s} s"
        live = False
        for job_id in job_ids:
            status = stack.get(f"/jobs/{job_id}").json()["status"]
            if status not in TERMINAL:
                live = True
                stack.session.delete(f"{stack.url}/jobs/{job_id}", headers=stack.admin(), timeout=30)
        quiet = quiet + 1 if not live and _training_idle(stack) else 0
        time.sleep(0.5)


def _training_idle(stack: LiveStack) -> bool:
    """Nothing queued or running on the training queue (what a new /retrain would 409 on)."""
    redis = stack.redis()
    running = StartedJobRegistry(jobs.TRAINING_QUEUE, connection=redis)
    running.cleanup()
    return Queue(jobs.TRAINING_QUEUE, connection=redis).count == 0 and not running.get_job_ids()


@pytest.fixture(scope="module")
def contract(stack: LiveStack) -> schemathesis.BaseSchema:
    """The document the live API serves, loaded through nginx."""
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(f"{stack.url}/openapi.json", config=config, timeout=30)


def _cancel_training(stack: LiveStack, training_jobs: set[str], response: Any) -> None:
    """A valid retrain body slipped through: cancel its training (_stop_trainings makes sure)."""
    try:
        job_id = response.json()["job_id"]
    except (ValueError, KeyError, TypeError):
        return  # the contract check reports the malformed answer
    training_jobs.add(job_id)
    stack.session.delete(f"{stack.url}/jobs/{job_id}", headers=stack.admin(), timeout=30)


@pytest.fixture(autouse=True)
def _nodeid_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read and rename ``node._nodeid``, which pytest 9.2's
    nodes do not have (they keep ``node._id``); give them one. Harmless once either side changes."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


RETRAIN_INTERVAL_S = 0.1
"""The test stack's RETRAIN_RATE_LIMIT (600r/m): nginx's burst stays full for later tests."""
_last_retrain = [0.0]


def _pace_retrain() -> None:
    wait = _last_retrain[0] + RETRAIN_INTERVAL_S - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    _last_retrain[0] = time.monotonic()


lazy = schemathesis.pytest.from_fixture("contract")


@lazy.parametrize()
def test_every_operation_keeps_its_contract(case: schemathesis.Case, stack: LiveStack, training_jobs: set[str]) -> None:
    if case.operation.path == "/models/{version}/activate":
        # Never a real version: activating one would change the served model under later tests.
        real = {entry.name for entry in (stack.store_dir / "versions").iterdir()}
        assert case.path_parameters.get("version") not in real, case.path_parameters
    if case.operation.path == "/retrain":
        _pace_retrain()
        # A valid body may start a training however fast it is canceled (see the xfail below):
        # it must never publish, so later tests still see the model they expect.
        if isinstance(case.body, dict) and case.body.get("promote", "auto") in ("auto", "always"):
            case.body["promote"] = "never"
    response = case.call(headers=stack.admin(), timeout=30)
    if case.operation.path == "/retrain" and response.status_code == 202:
        _cancel_training(stack, training_jobs, response)
    FUZZED[case.operation.label][f"{case.method} {response.status_code}"] += 1
    case.validate_response(response, checks=CHECKS, headers=stack.admin())


def test_the_fuzzer_reached_every_operation(contract) -> None:
    """Every documented operation was called (runs after the fuzz: pytest keeps file order)."""
    if not FUZZED:
        pytest.skip("the fuzz test did not run in this session")
    operations = {result.ok().label for result in contract.get_all_operations()}
    print("\nanswers per operation:", {label: dict(codes) for label, codes in sorted(FUZZED.items())})
    # Count only requests with the operation's own method (the coverage phase also sends others).
    reached = {label for label, codes in FUZZED.items() if any(k.startswith(label.split()[0] + " ") for k in codes)}
    assert operations == reached, operations ^ reached


# --- ids the queue could never have made --------------------------------------------
# rq's Job.fetch raises ValueError, not NoSuchJobError, for an id with any character but
# A-Za-z0-9_- before its first ':'. The fuzzer draws such ids only by chance; these pin them: 404.
@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("job_id", ["no.such.job", "café", "a b"])
def test_a_job_id_rq_cannot_hold_is_not_found(contract, stack: LiveStack, method: str, job_id: str) -> None:
    case = contract["/jobs/{job_id}"][method].Case(path_parameters={"job_id": job_id})
    response = case.call(headers=stack.admin(), timeout=30)
    case.validate_response(response, checks=CHECKS, headers=stack.admin())
    assert response.status_code == 404, response.text


# --- /predict with the current model's own features -----------------------------------
# The generic fuzzer cannot guess feature names, so almost all its instances are a 422.
# These draw the served model's real features with any JSON number: the answer is a 200
# with numbers or a 422, whatever pipeline TPOT chose (among them values beyond float32's range,
# e.g. the integers from 10**300, and values the pipeline overflows on: a 422, never a 500 or a null).
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
)
instances = st.fixed_dictionaries({name: numbers for name in FEATURES})
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


def _predict(contract: schemathesis.BaseSchema, stack: LiveStack, body: Any) -> Any:
    case = contract["/predict"]["POST"].Case(body=body, media_type="application/json")
    response = case.call(timeout=30)
    case.validate_response(response, checks=CHECKS)
    return response


@FUZZ
@given(instance=instances)
def test_predict_any_numbers_for_the_models_features(contract, stack: LiveStack, instance: dict) -> None:
    response = _predict(contract, stack, instance)
    assert response.status_code in (200, 422), response.text


@FUZZ
@given(rows=st.lists(instances, min_size=1, max_size=20))
def test_predict_batches_of_any_numbers(contract, stack: LiveStack, rows: list[dict]) -> None:
    response = _predict(contract, stack, {"instances": rows})
    assert response.status_code in (200, 422), response.text


# --- the success answers the fuzzer cannot reach without changing state ---------------
def test_activating_the_current_version_keeps_its_contract(contract, stack: LiveStack) -> None:
    """A no-op activation (the version already current) validates the 200 answer."""
    current = stack.get("/models").json()["current"]
    case = contract["/models/{version}/activate"]["POST"].Case(path_parameters={"version": current})
    response = case.call(headers=stack.admin(), timeout=30)
    case.validate_response(response, checks=CHECKS, headers=stack.admin())
    assert response.status_code in (200, 202), response.text
    assert stack.get("/models").json()["current"] == current


def _start_small_training(contract: schemathesis.BaseSchema, stack: LiveStack, training_jobs: set[str]) -> str:
    _stop_trainings(stack, training_jobs)  # whatever the fuzzer started: this one must not get a 409
    retrain = contract["/retrain"]["POST"].Case(body=SMALL_TRAINING, media_type="application/json")
    response = retrain.call(headers=stack.admin(), timeout=30)
    if response.status_code == 202:
        training_jobs.add(response.json()["job_id"])
    retrain.validate_response(response, checks=CHECKS, headers=stack.admin())
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _job_call(contract: schemathesis.BaseSchema, stack: LiveStack, method: str, job_id: str) -> Any:
    case = contract["/jobs/{job_id}"][method].Case(path_parameters={"job_id": job_id})
    response = case.call(headers=stack.admin(), timeout=30)
    case.validate_response(response, checks=CHECKS, headers=stack.admin())
    return response


SMALL_TRAINING = {"dataset": "iris", "promote": "never", "max_time_mins": 0.2, "generations": 1, "population_size": 2}


def test_stopping_a_running_training_keeps_its_contract(contract, stack: LiveStack, training_jobs: set[str]) -> None:
    """POST /retrain 202; GET /jobs/<id> started; DELETE 202 canceling; GET canceled; DELETE again 409."""
    job_id = _start_small_training(contract, stack, training_jobs)
    wait_for(
        lambda: _job_call(contract, stack, "GET", job_id).json()["status"] == "started",
        60,
        interval_s=0.1,
        what=f"job {job_id} started",
    )
    stop = _job_call(contract, stack, "DELETE", job_id)
    assert stop.status_code == 202, stop.text
    assert stop.json() == {"id": job_id, "status": "canceling"}
    wait_for(
        lambda: _job_call(contract, stack, "GET", job_id).json()["status"] in TERMINAL,
        60,
        interval_s=0.25,
        what=f"job {job_id} stopped",
    )
    assert _job_call(contract, stack, "GET", job_id).json()["status"] == "canceled"
    assert _job_call(contract, stack, "DELETE", job_id).status_code == 409


def test_a_training_canceled_while_queued_never_runs(contract, stack: LiveStack, training_jobs: set[str]) -> None:
    job_id = _start_small_training(contract, stack, training_jobs)
    cancel = _job_call(contract, stack, "DELETE", job_id)
    assert cancel.status_code in (200, 202), cancel.text
    if cancel.status_code == 202:  # the worker had already started it: a stop, also canceled
        assert stack.wait_job(job_id, timeout_s=60)["status"] == "canceled"
        return
    assert cancel.json() == {"id": job_id, "status": "canceled"}
    redis = stack.redis()

    def settled() -> dict | None:
        # Nothing queued or running on the training queue, and the job still canceled.
        if redis.llen("rq:queue:training") or redis.zcard("rq:wip:training"):
            return None
        body = _job_call(contract, stack, "GET", job_id).json()
        return body if body["status"] in ("canceled", "failed", "finished") else None

    view = wait_for(settled, timeout_s=60, interval_s=0.1, what="the training queue settled")
    _stop_trainings(stack, {job_id})
    # Canceled, and no training ran: no progress was ever recorded.
    assert (view["status"], view["progress"]) == ("canceled", None), view
