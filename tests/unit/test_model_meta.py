"""meta.json's one typed model: what the trainer writes is what the API reads back."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tpotserve.errors import ArtifactRejected
from tpotserve.model_meta import ModelMeta
from tpotserve.schema import feature_schema

FRAME = pd.DataFrame({"a": [1.0, 3.0], "b": [0.0, 2.0]})


def test_what_is_written_reads_back_unchanged_unknown_keys_too() -> None:
    written = ModelMeta(task="classification", features=feature_schema(FRAME), classes=["x", "y"],
                        cv_score=0.9, reason="test", written_by_a_newer_trainer={"k": 1}).to_json()
    assert set(written) == {"task", "features", "classes", "cv_score", "reason", "written_by_a_newer_trainer"}
    read = ModelMeta.from_json(json.loads(json.dumps(written)), "v1")
    assert read.to_json() == written
    assert read.feature_names == ["a", "b"] and read.is_classifier
    assert read.features[0].min == 1.0 and read.features[0].max == 3.0


def test_a_regressor_needs_no_classes() -> None:
    meta = ModelMeta.from_json({"task": "regression", "features": [{"name": "a"}]}, "r1")
    assert not meta.is_classifier and meta.classes is None
    assert meta.features[0].type == "number" and meta.features[0].min is None


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"task": "classification", "features": [{"name": "a"}]}, "classes"),
        ({"task": "clustering", "features": [], "classes": [1]}, "task"),
        ({"task": "regression"}, "features"),
        ({"task": "regression", "features": [{"min": 0}]}, "features.0.name"),
        ([1, 2], "meta.json"),
    ],
)
def test_metadata_that_cannot_describe_a_servable_model_is_rejected(data: object, says: str) -> None:
    with pytest.raises(ArtifactRejected, match="does not describe a servable model") as rejected:
        ModelMeta.from_json(data, "v9")
    assert says in rejected.value.message and "'v9'" in rejected.value.message
