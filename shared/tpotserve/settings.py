"""Where the services' configuration is read from the environment: one typed object.

Compose and the native launcher set the same variable names; every service
builds one :class:`Settings` at start-up and passes it down, so a setting is
parsed and validated in one place.

Two other modules of the services touch ``os.environ``, both as plumbing between
Gunicorn's master and its workers, not to read settings of their own:

- ``tpotserve_api/gunicorn_config.py`` writes ``PROMETHEUS_MULTIPROC_DIR`` into the
  master's environment: the configured directory, or a new temp directory when it
  is unset. prometheus-client reads that variable when it is imported, and the
  forked workers inherit it from the master. Its ``raw_env`` also sets
  ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` (from
  ``API_BLAS_THREADS``) in each worker, for the BLAS/OpenMP libraries to read.
- ``tpotserve_api/metrics.py`` (``multiprocess_dir``) reads ``PROMETHEUS_MULTIPROC_DIR``
  in the worker that answers ``GET /metrics``: the directory to sum is the one the
  master chose, which may be a temp directory no ``Settings`` field holds, and only
  the inherited environment carries it.

Outside the services' Python code the same names are read by the nginx image (its
envsubst step over ``nginx/templates/`` and ``nginx/entrypoint.d/15-tpotserve-tls.envsh``;
natively native/nginx_conf.py fills the same templates and sources the same script),
and the ``tpotserve`` CLI, a client, reads ``TPOTSERVE_URL``, ``TPOTSERVE_API_KEY``
and ``API_KEY``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .names import MODEL_NAME_PATTERN


class Settings(BaseSettings):
    """Typed configuration; each field documents its environment variable."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- native run ----------------------------------------------------------
    data_dir: Path = Field(default=Path("./.data"))
    """DATA_DIR: native run only: model volume, redis data, logs, rendered configs."""

    gateway_port: int = 8080
    """GATEWAY_PORT: the port nginx listens on for plain HTTP (with TLS on, it only redirects)."""

    gateway_tls_port: int = 8443
    """GATEWAY_TLS_PORT: the HTTPS port clients reach when TLS is on (443 on a VM);
    plain HTTP redirects there."""

    # --- TLS at the gateway (only nginx reads these) -------------------------
    tls_cert_file: Path | None = None
    """TLS_CERT_FILE: certificate chain (PEM) for HTTPS, as nginx sees the path. With
    TLS_KEY_FILE: HTTPS only, HTTP redirected, HSTS. Neither: plain HTTP, for local use."""

    tls_key_file: Path | None = None
    """TLS_KEY_FILE: the certificate's private key (PEM), as nginx sees the path."""

    # --- storage -----------------------------------------------------------
    model_dir: Path = Field(default=Path("./.data/models"))
    """MODEL_DIR: the model volume (versions/ and current.json)."""

    dataset_dir: Path = Field(default=Path("./.data/datasets"))
    """DATASET_DIR: uploaded training data (written by the API, read by the trainer)."""

    # --- training data rules -------------------------------------------------
    dataset_max_rows: int = 200_000
    """DATASET_MAX_ROWS: most data rows an uploaded CSV may have."""

    dataset_max_columns: int = 200
    """DATASET_MAX_COLUMNS: most columns an uploaded CSV may have."""

    min_training_rows: int = 20
    """MIN_TRAINING_ROWS: fewest rows a data set needs to train on."""

    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    """HOLDOUT_FRACTION: share of rows kept out of the search to score the promotion gate."""

    model_keep: int = Field(default=10, ge=2)
    """MODEL_KEEP: most model versions kept; the current one and the one before it never go."""

    # --- security ----------------------------------------------------------
    api_key: SecretStr | None = None
    """API_KEY: admin bearer token (retrain, datasets, activate, cancel). Unset: those answer 503."""

    predict_api_key: SecretStr | None = None
    """PREDICT_API_KEY: when set, /predict requires it (or API_KEY) as a bearer token."""

    model_signing_key: SecretStr | None = None
    """MODEL_SIGNING_KEY: HMAC key the trainer signs artifacts with and the API verifies."""

    allow_unsigned_models: bool = False
    """ALLOW_UNSIGNED_MODELS: insecure, development only: run without MODEL_SIGNING_KEY."""

    # --- queue -------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    """REDIS_URL: the Redis that carries the RQ queues and job state."""

    redis_timeout_s: float = 1.0
    """REDIS_TIMEOUT_S: connect/read timeout, so a dead Redis fails fast."""

    # --- serving -----------------------------------------------------------
    model_poll_interval_s: float = 0.5
    """MODEL_POLL_INTERVAL_S: how often each API worker checks current.json."""

    max_batch_rows: int = 10_000
    """MAX_BATCH_ROWS: largest ``instances`` list one /predict accepts (and rows one V2 infer)."""

    model_name: str = Field(default="iris", pattern=MODEL_NAME_PATTERN)
    """MODEL_NAME: the default model: what ``POST /predict`` and every endpoint without a model
    name serve, what the first training (bootstrap) trains, and its name under ``/models/<name>``
    and ``/v2/models/<name>``."""

    max_loaded_models: int = Field(default=16, ge=1)
    """MAX_LOADED_MODELS: most models one API worker holds in memory. The default model always
    stays; beyond the limit the least recently used one is dropped and loaded again on its next
    request (docs/models.md has the memory and load-time figures)."""

    compiled_inference: bool = True
    """COMPILED_INFERENCE: serve a version with its verified compiled form (ONNX Runtime) where it
    has one and it is the faster at the request's size (docs/performance.md#compiled-inference);
    false: every request takes the pipeline's own path, as before compiled inference."""

    max_body_bytes: int = 8 * 1024 * 1024
    """MAX_BODY_BYTES: largest request body (and CSV upload); nginx is rendered with the same."""

    api_bind: str = "127.0.0.1:8000"
    """API_BIND: Gunicorn's listen address (``host:port`` or ``unix:/path``)."""

    predict_rate_limit: str = "1000r/s"
    """PREDICT_RATE_LIMIT: nginx limit_req rate per client address on /predict (429 beyond it)."""

    predict_rate_burst: int = 2000
    """PREDICT_RATE_BURST: requests above the rate nginx lets through at once on /predict."""

    retrain_rate_limit: str = "30r/m"
    """RETRAIN_RATE_LIMIT: nginx limit_req rate per client address on /retrain."""

    retrain_rate_burst: int = 10
    """RETRAIN_RATE_BURST: requests above the rate nginx lets through at once on /retrain."""

    metrics_allow: str = "127.0.0.1"
    """METRICS_ALLOW: address or CIDR nginx lets read /metrics (everyone else: 403)."""

    api_workers: int = 2
    """API_WORKERS: Gunicorn worker processes (docs/performance.md: how many, measured)."""

    api_worker_class: Literal["sync", "gthread"] = "sync"
    """API_WORKER_CLASS: Gunicorn worker type. ``sync``: one request at a time per worker,
    a new upstream connection per request (measured best here, docs/performance.md);
    ``gthread``: API_THREADS threads per worker and keep-alive to nginx."""

    api_threads: int = Field(default=1, ge=1)
    """API_THREADS: threads per Gunicorn worker (more than 1 means the gthread worker)."""

    api_blas_threads: int = Field(default=1, ge=1)
    """API_BLAS_THREADS: BLAS/OpenMP threads per API worker (OMP_NUM_THREADS,
    OPENBLAS_NUM_THREADS, MKL_NUM_THREADS); with 1, workers do not fight over the cores.
    The API also runs every model's ``n_jobs`` at 1."""

    prometheus_multiproc_dir: Path | None = None
    """PROMETHEUS_MULTIPROC_DIR: the API only: where its Gunicorn workers keep their metric files
    (prometheus-client's multiprocess mode), emptied when Gunicorn starts. Unset: a new temp directory."""

    # --- watching the served models: drift and feedback (docs/monitoring.md) --
    monitoring: bool = True
    """MONITORING: count served rows into each version's drift bins and keep answers for feedback.
    Off: predictions as before, drift and quality answer with no live rows."""

    monitoring_flush_rows: int = Field(default=1000, ge=1)
    """MONITORING_FLUSH_ROWS: an API worker writes its buffered counts to Redis after this many rows..."""

    monitoring_flush_s: float = Field(default=2.0, gt=0)
    """MONITORING_FLUSH_S: ...or this many seconds, whichever comes first (one pipelined round trip)."""

    monitoring_bucket_s: int = Field(default=300, ge=1)
    """MONITORING_BUCKET_S: the time resolution of the live counts (a drift window is whole buckets)."""

    monitoring_retention_s: int = Field(default=7 * 86400, ge=60)
    """MONITORING_RETENTION_S: live counts and live quality expire after this (Redis TTL)."""

    drift_window_s: int = Field(default=3600, ge=1)
    """DRIFT_WINDOW_S: the default window of GET /models/<name>/drift and of the drift gauges."""

    drift_min_rows: int = Field(default=200, ge=1)
    """DRIFT_MIN_ROWS: fewer live rows than this in the window: no verdict ("not_enough_rows")."""

    drift_js_threshold: float = Field(default=0.1, gt=0)
    """DRIFT_JS_THRESHOLD: a feature whose Jensen-Shannon distance (base 2) exceeds this has drifted..."""

    drift_psi_threshold: float = Field(default=0.2, gt=0)
    """DRIFT_PSI_THRESHOLD: ...or whose population stability index exceeds this."""

    drift_p_value: float = Field(default=0.001, gt=0, lt=1)
    """DRIFT_P_VALUE: ...and a chi-square test of live vs training bins rejects "the same distribution"
    at this level (so sampling noise in small windows is not called drift)."""

    feedback_ttl_s: int = Field(default=86400, ge=60)
    """FEEDBACK_TTL_S: how long the stack remembers what it answered, for feedback to join."""

    feedback_max_answers: int = Field(default=200_000, ge=1)
    """FEEDBACK_MAX_ANSWERS: at most this many answers remembered per model per hour (more are not kept)."""

    feedback_keep_rows: str = ""
    """FEEDBACK_KEEP_ROWS: models (comma-separated, or ``*``) whose feedback is kept with its features
    as labelled live data, for retraining. Empty: none."""

    feedback_keep_rows_max: int = Field(default=10_000, ge=1)
    """FEEDBACK_KEEP_ROWS_MAX: labelled live rows kept per model (the newest)."""

    # --- automation (the scheduler: tpotserve.policy, docs/automation.md) ---------
    scheduler_interval_s: float = Field(default=60.0, gt=0)
    """SCHEDULER_INTERVAL_S: how often the scheduler evaluates every model's policy."""

    scheduler_heartbeat_file: str = "/tmp/tpotserve-scheduler.alive"
    """SCHEDULER_HEARTBEAT_FILE: touched after every tick; the healthcheck reads its age."""
    # --- shadow candidates (docs/automation.md) -------------------------
    shadow_share: float = Field(default=0.05, gt=0, le=1)
    """SHADOW_SHARE: the share of served rows a shadow version also answers, when neither the
    request putting it in shadow nor the model's policy (``shadow.share``) says."""

    shadow_queue_size: int = Field(default=1000, ge=1)
    """SHADOW_QUEUE_SIZE: sampled requests an API worker holds for its shadow runner; beyond it
    they are dropped and counted (tpotserve_shadow_dropped_total), never waited for."""

    shadow_max_batch_rows: int = Field(default=100, ge=1)
    """SHADOW_MAX_BATCH_ROWS: most rows of one batch request the shadow answers (a sample of them)."""

    # --- training budget (defaults for bootstrap and for retrains) ----------
    tpot_max_time_mins: float = 1.0
    """TPOT_MAX_TIME_MINS: default wall-clock budget of one TPOT search."""

    tpot_generations: int = 3
    """TPOT_GENERATIONS: default number of generations."""

    tpot_population_size: int = 8
    """TPOT_POPULATION_SIZE: default population size."""

    tpot_cv: int = 5
    """TPOT_CV: default number of cross-validation folds."""

    tpot_n_jobs: int = 1
    """TPOT_N_JOBS: processes TPOT's Dask cluster uses for one search."""

    tpot_random_state: int | None = None
    """TPOT_RANDOM_STATE: seed for reproducible searches (unset: random)."""

    # --- where searches run -------------------------------------------------
    dask_scheduler_address: str | None = None
    """DASK_SCHEDULER_ADDRESS: a Dask scheduler (``tcp://host:8786``) every search runs on.
    Unset: TPOT's own local cluster of TPOT_N_JOBS processes per search. Dask's
    own CLI reads the same variable, so ``dask worker`` needs no argument."""

    dask_connect_timeout_s: float = Field(default=5.0, gt=0)
    """DASK_CONNECT_TIMEOUT_S: a job whose scheduler does not answer within this fails at once."""

    dask_worker_wait_s: float = Field(default=30.0, gt=0)
    """DASK_WORKER_WAIT_S: how long a job waits for a first Dask worker before failing."""

    # --- caps a retrain request may not exceed -----------------------------
    max_time_mins_cap: float = 60.0
    """MAX_TIME_MINS_CAP: largest ``max_time_mins`` a request may ask for."""

    generations_cap: int = 100
    """GENERATIONS_CAP: largest ``generations`` a request may ask for."""

    population_size_cap: int = 100
    """POPULATION_SIZE_CAP: largest ``population_size`` a request may ask for."""

    cv_cap: int = 10
    """CV_CAP: largest ``cv`` a request may ask for."""

    job_timeout_margin_s: int = 300
    """JOB_TIMEOUT_MARGIN_S: added to a run's budget to form RQ's job_timeout."""

    bootstrap_on_start: bool = True
    """BOOTSTRAP_ON_START: the worker trains an iris model when none is current."""

    @field_validator("api_key", "model_signing_key", "predict_api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        # Compose passes an unset variable as "", which must not become a valid key.
        return None if value in ("", None) else value

    @field_validator("tpot_random_state", "dask_scheduler_address", mode="before")
    @classmethod
    def _empty_seed_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("prometheus_multiproc_dir", mode="before")
    @classmethod
    def _empty_dir_is_unset(cls, value: object) -> object:
        # "" would become Path("."): Gunicorn would then empty the working directory of *.db files.
        return None if value == "" else value


def keeps_feedback_rows(settings: Settings, model: str) -> bool:
    """Whether ``model``'s feedback is kept with its features (FEEDBACK_KEEP_ROWS)."""
    names = {name.strip() for name in settings.feedback_keep_rows.split(",") if name.strip()}
    return "*" in names or model in names


def signing_key(settings: Settings) -> bytes | None:
    """The artifact signing key, or None in the explicit insecure mode.

    Raises RuntimeError when neither is configured: a service must refuse to
    start rather than load (or write) unverifiable pickles.
    """
    if settings.model_signing_key is not None:
        return settings.model_signing_key.get_secret_value().encode()
    if settings.allow_unsigned_models:
        return None
    raise RuntimeError(
        "MODEL_SIGNING_KEY is not set. Set it to the same secret in the API and the trainer "
        "(e.g. `openssl rand -hex 32`), or set ALLOW_UNSIGNED_MODELS=true for insecure local development."
    )


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; keyword overrides win (used by tests)."""
    return Settings(**overrides)
