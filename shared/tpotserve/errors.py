"""Domain errors shared by both services. They carry no HTTP.

The API maps each one to a status code in one table
(``tpotserve_api.errors``); the trainer records them as a job's failure reason.

    TpotServeError
    ├── InvalidInput          a request or data set that cannot be used (field names the culprit)
    │   ├── MalformedBody     not parseable at all
    │   ├── UnsupportedMedia  wrong Content-Type
    │   └── PayloadTooLarge   a body over its size limit
    ├── NotFound              no such job, model version, ...
    ├── Conflict              the request clashes with the current state (a training is running)
    │   ├── NoReference       a version without a reference profile: no drift to compute
    │   └── ContractConflict  a retrain or activation would change a model's contract (tpotserve.contract)
    ├── Unauthorized          missing or wrong credentials
    ├── NotConfigured         a feature needs configuration the operator did not give
    ├── ModelNotReady         no verified model is loaded yet
    ├── QueueUnavailable      Redis cannot be reached
    ├── ArtifactRejected      a model file failed verification (hash, load, smoke test)
    ├── TrainingFailed        TPOT could not produce a model
    ├── BackupError           no backup was made (tpotserve.backup: the command line's, never the API's)
    └── RestoreError          a restore was refused or failed; no pointer was written (likewise)
"""

from __future__ import annotations


class TpotServeError(Exception):
    """Base of every error the product raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details
        """Extra JSON-able facts for the client, e.g. the running job's id."""


class InvalidInput(TpotServeError):
    code = "invalid_input"


class MalformedBody(InvalidInput):
    code = "malformed_body"


class UnsupportedMedia(InvalidInput):
    code = "unsupported_media_type"


class NotFound(TpotServeError):
    code = "not_found"


class Conflict(TpotServeError):
    code = "conflict"


class NoReference(Conflict):
    """A version without a reference profile (trained before drift monitoring): no drift to compute."""

    code = "no_reference"


class ContractConflict(Conflict):
    """A retrain or activation would change the features, target, task or classes a model
    serves; ``details`` carry ``contract_change`` (tpotserve.contract.ContractChange.to_json)."""

    code = "contract_changed"


class PayloadTooLarge(InvalidInput):
    """A body over its size limit. The default message is the one Werkzeug answers with when
    its own limit (MAX_CONTENT_LENGTH, the multipart parser) trips first: one answer either way."""

    code = "payload_too_large"

    def __init__(self, message: str = "The data value transmitted exceeds the capacity limit.", **kwargs: object
                 ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class Unauthorized(TpotServeError):
    code = "unauthorized"


class NotConfigured(TpotServeError):
    code = "not_configured"


class ModelNotReady(TpotServeError):
    code = "model_not_ready"


class QueueUnavailable(TpotServeError):
    code = "queue_unavailable"


class ArtifactRejected(TpotServeError):
    code = "artifact_rejected"


class TrainingFailed(TpotServeError):
    code = "training_failed"
