"""A small typed client for the tpotserve gateway (the API: docs/api.md).

    from tpotserve_cli import Client

    client = Client("http://127.0.0.1:8080", api_key="change-me")
    client.predict([{"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}])
    job = client.retrain(dataset="iris", max_time_mins=0.5, promote="never")
    final = client.wait(job["job_id"], on_progress=lambda j: print(j["progress"]))
    client.list_models()                      # every named model (GET /registry)
    client.predict(rows, model="housing")     # a named model; model=None: the default one
    client.leaderboard(model="housing")       # what the training of its current version tried
    client.card(fmt="json")                   # the default model's current model card
    client.drift(window=3600)                 # live inputs against the training rows
    answer = client.predict(rows)             # answer.prediction_id: X-Prediction-ID
    client.feedback([{"id": answer.row_ids()[0], "label": "setosa"}])
    client.quality()                          # live accuracy (or MAE...) from that feedback

``model=None`` (the default everywhere) uses the unnamed endpoints (``/predict``,
``/models``...), which serve the server's default model, so a server from before
named models keeps working; ``model="name"`` uses ``/models/<name>/...``.

Every answer is returned as the decoded JSON object (``card(fmt="markdown")``: the text). An API error
(``{"error": {"code", "message", "field"}}``) raises :class:`TpotServeAPIError`;
a gateway that cannot be reached raises :class:`TpotServeConnectionError`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import quote

import requests

DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL_STATUSES = frozenset({"finished", "failed", "canceled"})

JSON = dict[str, Any]
Row = Mapping[str, Any]
Task = Literal["classification", "regression"]
Promote = Literal["auto", "always", "never"]
CardFormat = Literal["markdown", "json"]
PREDICTION_ID_HEADER = "X-Prediction-ID"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""The server's rule for model names (a path segment on disk and in URLs); ``current`` is reserved."""


def check_model_name(name: str) -> str:
    """``name`` if it can name a model; ValueError otherwise (nothing is sent for a bad name).

    ``/models/current`` is the default model's endpoint, so checking here also keeps
    ``current_model(model="current")`` from silently answering for the default model.
    """
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name == "current":
        raise ValueError(
            f"{name!r} is not a model name: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, and not 'current'"
        )
    return name


def _named(model: str) -> str:
    """The path of a named model: ``/models/<name>``."""
    return f"/models/{quote(check_model_name(model), safe='')}"


class TpotServeError(Exception):
    """Base class of everything this client raises on purpose."""


class TpotServeAPIError(TpotServeError):
    """The API answered with an error status.

    ``code``, ``message`` and ``field`` come from the API's error body; ``details``
    holds any other keys of it (e.g. ``job_id`` and ``location`` of a 409).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = dict(details or {})
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.code}: {self.message}"
        if self.field:
            text += f" (field: {self.field})"
        job_id = self.details.get("job_id")
        if job_id and str(job_id) not in self.message:
            text += f" (job: {job_id})"
        # One line, whatever the server put in the message.
        return " ".join(text.split())


class TpotServeConnectionError(TpotServeError):
    """The gateway could not be reached (refused, unresolvable, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"could not reach {url}: {reason}")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _reason(exc: requests.RequestException) -> str:
    """A short, human reason for a connection failure (requests' own text is a page long)."""
    if isinstance(exc, (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                        requests.exceptions.InvalidURL)):
        return "not a valid http(s) URL"
    if isinstance(exc, requests.ConnectTimeout):
        return "the connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer before the timeout"
    match = _ERRNO.search(str(exc))
    if match:
        return match.group(1).strip().rstrip(".").lower()
    return type(exc).__name__


def error_from_response(response: requests.Response) -> TpotServeAPIError:
    """Map an error response to :class:`TpotServeAPIError`, JSON body or not."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        details = {k: v for k, v in error.items() if k not in ("code", "message", "field")}
        return TpotServeAPIError(
            response.status_code,
            str(error.get("code") or "http_error"),
            str(error.get("message") or response.reason or "error"),
            error.get("field"),
            details,
        )
    text = " ".join((response.text or "").split())[:200]
    return TpotServeAPIError(response.status_code, "http_error", text or response.reason or "error")


class Prediction(dict):  # type: ignore[type-arg]
    """A predict answer: the API's JSON object (a plain ``dict`` to every existing caller), plus
    ``prediction_id``, the answer's ``X-Prediction-ID`` header (None from a server without it).

    Feedback names one row of the answer as ``"<prediction_id>:<row>"`` (:meth:`row_ids`).
    """

    prediction_id: str | None = None

    def row_ids(self) -> list[str]:
        """``"<prediction_id>:<row>"`` for each row, in order: the ids :meth:`Client.feedback` takes."""
        if not self.prediction_id:
            return []
        return [f"{self.prediction_id}:{row}" for row in range(len(self.get("predictions") or []))]


def _window(window: int | None, since: str | float | datetime | None) -> dict[str, str]:
    """The query of a watch endpoint: ``window`` seconds, or ``since`` (ISO 8601, epoch, datetime)."""
    if window is not None and since is not None:
        raise ValueError("give either window or since, not both")
    if window is not None:
        return {"window": str(int(window))}
    if since is None:
        return {}
    return {"since": since.isoformat() if isinstance(since, datetime) else str(since)}


class Client:
    """The tpotserve API through its gateway.

    ``timeout`` is requests' (connect, read) timeout in seconds for each call;
    ``api_key`` is sent as ``Authorization: Bearer`` on every request (the admin
    key opens the write endpoints; a predict key opens /predict when it is closed).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float | tuple[float, float] = (5.0, 60.0),
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout
        self.session = session or requests.Session()

    # --- transport -----------------------------------------------------------
    def send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request; the response (status < 400), or raise a :class:`TpotServeError`."""
        headers = dict(kwargs.pop("headers", None) or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, self.url + path, headers=headers, **kwargs)
        except requests.RequestException as exc:
            raise TpotServeConnectionError(self.url, _reason(exc)) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        """Send one request; the decoded JSON answer, or raise a :class:`TpotServeError`."""
        response = self.send(method, path, **kwargs)
        return self._json(response, method, path)

    @staticmethod
    def _json(response: requests.Response, method: str, path: str) -> JSON:
        try:
            body = response.json()
        except ValueError as exc:
            raise TpotServeAPIError(
                response.status_code, "invalid_response", f"{method} {path} did not answer JSON"
            ) from exc
        return body if isinstance(body, dict) else {"data": body}

    # --- predictions ---------------------------------------------------------
    def predict(self, rows: Sequence[Row] | Row, model: str | None = None) -> Prediction:
        """Predict a batch of rows (feature name -> value); one mapping is a batch of one.

        ``model``: a named model (``POST /models/<name>/predict``); None: the default one
        (``POST /predict``). Returns the API's batch answer: ``predictions``,
        ``probabilities`` (classifiers), ``model_version`` and any ``warnings``, as a
        :class:`Prediction` (a dict) whose ``prediction_id`` is the ``X-Prediction-ID``
        header that :meth:`feedback` refers to.
        """
        instances = [dict(rows)] if isinstance(rows, Mapping) else [dict(row) for row in rows]
        path = "/predict" if model is None else f"{_named(model)}/predict"
        response = self.send("POST", path, json={"instances": instances})
        answer = Prediction(self._json(response, "POST", path))
        answer.prediction_id = response.headers.get(PREDICTION_ID_HEADER) or None
        return answer

    # --- watching the served model --------------------------------------------
    def drift(
        self,
        model: str | None = None,
        window: int | None = None,
        since: str | float | datetime | None = None,
        version: str | None = None,
    ) -> JSON:
        """Live inputs against the training rows, per feature (PSI, JS distance, verdict).

        ``window``: the last that many seconds; ``since``: from an ISO 8601 time, epoch
        seconds or a datetime (one or neither; neither: the server's ``DRIFT_WINDOW_S``).
        ``version``: another stored version than the served one. ``GET /drift`` or
        ``GET /models/<name>/drift``; a version without a reference profile is a 409
        ``no_reference``.
        """
        params = _window(window, since)
        if version is not None:
            params["version"] = version
        path = "/drift" if model is None else f"{_named(model)}/drift"
        return self.request("GET", path, params=params)

    def quality(
        self, model: str | None = None, window: int | None = None, since: str | float | datetime | None = None
    ) -> JSON:
        """Live quality from feedback, per version beside its holdout score (``GET /quality``):
        ``versions`` (accuracy, or mae / rmse / r2), ``series`` per time bucket, ``skipped``."""
        path = "/quality" if model is None else f"{_named(model)}/quality"
        return self.request("GET", path, params=_window(window, since))

    def shadow(self, model: str | None = None) -> JSON:
        """The model's shadow candidate (``GET /models/<name>/shadow``, ``GET /shadow``):
        ``shadow`` (shadow.json, None when no version is in shadow), ``figures`` (agreement,
        the shadow's latency, both versions' live scores on the same labelled rows) and
        ``evaluation`` (``decision``: promote, wait or drop, with its test)."""
        return self.request("GET", "/shadow" if model is None else f"{_named(model)}/shadow")

    def set_shadow(self, version: str, model: str | None = None, share: float | None = None) -> JSON:
        """Put a stored version in shadow (admin key): it answers ``share`` of the served rows too
        (None: the model's policy, else the server's SHADOW_SHARE). ``done`` is False when the
        control job was queued (202). 404: no such version; 409: the served one, or another contract."""
        version_path = quote(version, safe="")
        body = {"json": {"share": share}} if share is not None else {}
        if model is None:
            return self.request("POST", f"/shadow/{version_path}", **body)
        return self.request("POST", f"{_named(model)}/versions/{version_path}/shadow", **body)

    def clear_shadow(self, model: str | None = None) -> JSON:
        """Take the model's shadow out (admin key); ``cleared``: what was in shadow (None: nothing)."""
        return self.request("DELETE", "/shadow" if model is None else f"{_named(model)}/shadow")

    def feedback(
        self, items: Sequence[Mapping[str, Any]], model: str | None = None,
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> JSON:
        """Tell the server the truth for answers it gave (predict scope).

        ``items``: ``{"id": "<X-Prediction-ID>:<row>", "label": ...}`` (classification) or
        ``"value"`` (regression); ``rows``: whole rows with their features and the target,
        which the served model answers now. Returns ``accepted``, ``skipped`` (each with
        ``index``, ``in``, ``id`` and ``reason``) and ``kept_rows``.
        """
        path = "/feedback" if model is None else f"{_named(model)}/feedback"
        listed = [dict(item) for item in items]
        body: Any = listed if rows is None else {"feedback": listed, "rows": [dict(row) for row in rows]}
        return self.request("POST", path, json=body)

    # --- training ------------------------------------------------------------
    def retrain(
        self,
        dataset: str | None = None,
        *,
        model: str | None = None,
        target: str | None = None,
        task: Task | None = None,
        max_time_mins: float | None = None,
        generations: int | None = None,
        population_size: int | None = None,
        cv: int | None = None,
        scoring: str | None = None,
        promote: Promote | None = None,
        queue: bool | None = None,
        baselines: bool | None = None,
        description: str | None = None,
        random_state: int | None = None,
        replace_contract: bool | None = None,
    ) -> JSON:
        """Start a training (admin key). Omitted values take the server's defaults.

        ``model``: the named model to train a new version of (a new name creates it);
        None: the default model. Without ``dataset`` the server retrains the model on the
        data set, target and task of its current version (iris for a model that has none;
        a server from before named models always takes iris). ``baselines=False``: publish
        TPOT's pick only (the server's default fits the scikit-learn baselines too and
        publishes the best by CV score); ``description``: text for the model card;
        ``random_state``: seeds TPOT, the baselines, the folds and the holdout split.

        ``replace_contract``: train even if the data set changes the model's contract
        (features, target, task, removed classes); without it the server answers 409
        ``contract_changed`` (``TpotServeAPIError.details["contract_change"]`` says what changes).

        Returns the 202 answer: ``job_id``, ``status``, ``location`` and the full ``request``.
        """
        body = {
            "model": None if model is None else check_model_name(model),
            "dataset": dataset,
            "target": target,
            "task": task,
            "max_time_mins": max_time_mins,
            "generations": generations,
            "population_size": population_size,
            "cv": cv,
            "scoring": scoring,
            "promote": promote,
            "queue": queue,
            "baselines": baselines,
            "description": description,
            "random_state": random_state,
            "replace_contract": replace_contract,
        }
        return self.request("POST", "/retrain", json={k: v for k, v in body.items() if v is not None})

    def job(self, job_id: str) -> JSON:
        """A job's public view: ``status``, ``progress``, ``result`` or ``error``."""
        return self.request("GET", f"/jobs/{quote(job_id, safe='')}")

    def cancel(self, job_id: str) -> JSON:
        """Cancel a queued job or stop a running one (admin key); 409 once it has ended."""
        return self.request("DELETE", f"/jobs/{quote(job_id, safe='')}")

    def wait(
        self,
        job_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Poll a job until it is finished, failed or canceled; return its last view.

        ``on_progress`` is called with every view polled, the last one included.
        Raises :class:`TimeoutError` when ``timeout`` seconds pass first (the job
        keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.job(job_id)
            if on_progress is not None:
                on_progress(view)
            if view.get("status") in TERMINAL_STATUSES:
                return view
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {view.get('status')} after {timeout} s")
            time.sleep(poll_interval)

    # --- models --------------------------------------------------------------
    def registry(self) -> JSON:
        """Every named model: ``{"default": name, "max_loaded_models": n, "models": [...]}``."""
        return self.request("GET", "/registry")

    def list_models(self) -> list[JSON]:
        """The ``models`` of :meth:`registry`, the default model first: ``name``,
        ``default``, ``current_version``, ``versions`` (a count), ``task``, ``dataset``..."""
        return list(self.registry()["models"])

    def models(self, model: str | None = None) -> JSON:
        """Every stored version's metadata: ``{"current": version, "versions": [...]}``.

        ``model``: a named model's versions (``GET /models/<name>/versions``, which adds
        ``"model"``); None: the default model's (``GET /models``).
        """
        return self.request("GET", "/models" if model is None else f"{_named(model)}/versions")

    def current_model(self, model: str | None = None) -> JSON:
        """The metadata of the version the answering API worker serves.

        ``model``: a named model (``GET /models/<name>``, which adds ``"model"``); None:
        the default model (``GET /models/current``).
        """
        return self.request("GET", "/models/current" if model is None else _named(model))

    def activate(self, version: str, model: str | None = None, replace_contract: bool = False) -> JSON:
        """Make a stored version current (rollback; admin key).

        ``model``: a named model's version; None: the default model's. ``activated`` is
        False when the activation was queued (202) rather than done. A version whose
        contract differs from the served one's is a 409 ``contract_changed`` unless
        ``replace_contract``.
        """
        version_path = quote(version, safe="")
        body = {"json": {"replace_contract": True}} if replace_contract else {}
        if model is None:
            return self.request("POST", f"/models/{version_path}/activate", **body)
        return self.request("POST", f"{_named(model)}/versions/{version_path}/activate", **body)

    # --- a version's documents ------------------------------------------------
    def _version_path(self, model: str | None, version: str) -> str:
        """``/models/<name>/versions/<version>``; ``model=None``: the default model's name from
        ``GET /registry`` (these documents have no unnamed endpoint)."""
        name = model if model is not None else str(self.registry()["default"])
        return f"{_named(name)}/versions/{quote(version, safe='')}"

    def leaderboard(self, model: str | None = None, version: str = "current") -> JSON:
        """What a version's training tried, ranked by CV score: ``rows`` (TPOT's best and the
        baselines; ``selected`` marks the published one), ``tpot`` counts, ``selection``."""
        return self.request("GET", f"{self._version_path(model, version)}/leaderboard")

    def card(self, model: str | None = None, version: str = "current", fmt: CardFormat = "markdown") -> Any:
        """A version's model card: the Markdown text, or with ``fmt="json"`` the JSON card
        (dataset, pipeline, selection, scores, permutation_importance, gate...)."""
        if fmt not in ("markdown", "json"):
            raise ValueError(f"fmt is 'markdown' or 'json', not {fmt!r}")
        path = f"{self._version_path(model, version)}/card"
        if fmt == "json":
            return self.request("GET", path, params={"format": "json"})
        response = self.send("GET", path, params={"format": "markdown"})
        return response.content.decode("utf-8", errors="replace")

    # --- retraining on its own (docs/automation.md) -----------------------------
    def _model_path(self, model: str | None) -> str:
        return _named(model if model is not None else str(self.registry()["default"]))

    def policy(self, model: str | None = None) -> JSON:
        """A model's retraining policy (None: none set) and the scheduler's last view of it
        (``scheduler``: next due time, each trigger's figures, what it enqueued); admin key."""
        return self.request("GET", f"{self._model_path(model)}/policy")

    def set_policy(self, policy: dict[str, Any], model: str | None = None) -> JSON:
        """Set a model's retraining policy (admin key); effective at the scheduler's next tick."""
        return self.request("PUT", f"{self._model_path(model)}/policy", json=policy)

    def delete_policy(self, model: str | None = None) -> JSON:
        """Remove a model's policy: it trains only on request again (admin key)."""
        return self.request("DELETE", f"{self._model_path(model)}/policy")

    # --- data sets -----------------------------------------------------------
    def datasets(self) -> list[JSON]:
        """The bundled ``iris`` and every uploaded data set."""
        return list(self.request("GET", "/datasets")["datasets"])

    def dataset(self, dataset_id: str) -> JSON:
        """One data set's metadata (columns, preview...)."""
        return self.request("GET", f"/datasets/{quote(dataset_id, safe='')}")

    def upload_dataset(self, data: str | Path | bytes | BinaryIO, filename: str | None = None) -> JSON:
        """Upload a CSV (a path, bytes or a binary file object; admin key).

        The answer has the data set's ``id`` and ``created`` (False when the same bytes
        were already stored).
        """
        if isinstance(data, (str, Path)):
            path = Path(data)
            with path.open("rb") as handle:
                return self.upload_dataset(handle, filename or path.name)
        return self.request("POST", "/datasets", files={"file": (filename or "data.csv", data, "text/csv")})

    # --- health --------------------------------------------------------------
    def ready(self) -> JSON:
        """``/readyz``: raises :class:`TpotServeAPIError` (503) while no model is loaded."""
        return self.request("GET", "/readyz")
