"""What a model version's meta.json says, as one typed model.

The trainer builds it (``tpotserve_trainer.jobs.retrain``), the API reads it back for every
model it loads (``tpotserve_api.model_holder``) and refuses a version whose metadata does not
fit, and the tests and the benchmark build theirs with it, so all four agree on one shape.

The model store itself stays content-agnostic: it stores a JSON object per version and adds
``version``, ``sha256`` and ``signature`` when it writes one (:meth:`tpotserve.store.ModelStore.write_version`).
Keys this model does not name are kept (``extra="allow"``): a version written by a newer
trainer still loads, and ``GET /models`` shows everything meta.json holds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import ArtifactRejected

__all__ = ["Feature", "ModelMeta"]


class Feature(BaseModel):
    """One input column: its name, in the model's order, and the range seen in training."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    type: Literal["number"] = "number"
    min: float | None = None
    max: float | None = None


class ModelMeta(BaseModel):
    """A model version's metadata (meta.json)."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    # What the API needs to serve the model.
    task: Literal["classification", "regression"]
    features: list[Feature]
    classes: list[Any] | None = None
    """Class labels in the order of ``predict_proba``'s columns (classifiers only)."""
    label_encoded: bool = False
    """True when the pipeline predicts 0..n-1 and ``classes`` maps them to labels."""

    # Where it came from and how good it is: always written by the trainer, not needed to serve.
    created_at: str | None = None
    model: str | None = None
    """The named model this version belongs to (written since named models)."""
    dataset: str | None = None
    target: str | None = None
    dataset_sha256: str | None = None
    scoring: str | None = None
    cv_score: float | None = None
    holdout_score: float | None = None
    training_rows: int | None = None
    holdout_rows: int | None = None
    tpot_settings: dict[str, Any] = {}
    pipeline: str = ""
    """The served pipeline (TPOT's pick or the baseline that beat it)."""
    tpot_pipeline: str | None = None
    """TPOT's own pick, even when a baseline won (written since leaderboards)."""
    selection: dict[str, Any] | None = None
    """Which candidate won on CV score and by how much (``tpotserve_trainer.leaderboard.choose``)."""
    baselines: bool | None = None
    """Whether the training fitted the scikit-learn baselines."""
    description: str | None = None
    """The user's description, given at retrain; shown in the model card."""
    evaluated_pipelines: int | None = None
    training_seconds: float | None = None
    compute: dict[str, Any] | None = None
    library_versions: dict[str, Any] = {}
    job_id: str | None = None
    reason: str | None = None
    trigger: dict[str, Any] | None = None
    feedback_rows: int | None = None
    """Labelled live rows added to the data set for this training (their CSV: feedback_rows.csv)."""
    """Why the scheduler ran this training (tpotserve.policy); absent for a requested one."""
    gate: dict[str, Any] | None = None
    compiled: dict[str, Any] | None = None
    """The compiled form (``tpotserve.compiled``): model.onnx's sha256, signature, precision and
    outputs, or ``file: null`` and the reason none was made. Absent: trained before compiled inference."""

    # Added by the store when the version is written.
    version: str | None = None
    sha256: str | None = None
    signature: str | None = None
    files: dict[str, str] = {}
    """sha256 of each document stored beside the artifact (leaderboard.json, card.json, card.md)."""

    @model_validator(mode="after")
    def _classifiers_name_their_classes(self) -> ModelMeta:
        if self.task == "classification" and not self.classes:
            raise ValueError("a classifier's metadata must list its classes")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    def to_json(self) -> dict[str, Any]:
        """The JSON object for meta.json: the keys given (unknown ones too), no defaults added,
        so what was read is written back, and answered, unchanged."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def from_json(cls, data: Any, version: str) -> ModelMeta:
        """Read ``data`` (a parsed meta.json); ArtifactRejected when it does not fit."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'meta.json'}: {error['msg']}"
                for error in exc.errors()[:3]
            )
            raise ArtifactRejected(f"metadata of {version!r} does not describe a servable model: {problems}") from exc
