"""Compile a fitted pipeline to ONNX at publish time (issue 22; docs/performance.md).

skl2onnx converts scikit-learn steps, onnxmltools XGBoost and LightGBM. What neither has a
converter for, and TPOT's default search space uses, is converted here: TPOT's own steps
(Passthrough, SkipTransformer, ZeroCount, EstimatorTransformer, ColumnOneHotEncoder,
ColumnOrdinalEncoder) and FastICA, RBFSampler, FeatureAgglomeration, Nystroem; Normalizer is
replaced too, since the stock conversion of ``norm='max'`` divides by max(x), not max(|x|), and
KBinsDiscretizer, whose stock conversion compares with the bin edges in float32.

Precision: the graph takes float64 and keeps it ("mixed"), except that every tree model
(forests, boosting, XGBoost...) gets its input cast to float32 first -- ONNX Runtime runs tree
ensembles in float32 only, and scikit-learn itself casts to float32 before a tree. When the
mixed graph cannot be built, an all-float32 graph is tried. Whichever graph comes out is
checked here on the verification rows (``tpotserve.compiled``) and kept only if it matches,
so the trainer never stores a form the API would refuse; the API checks again at load.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier

from tpotserve.backup import SMALL_MEMBER_MAX_BYTES
from tpotserve.compiled import Verdict, check_outputs, verification_rows
from tpotserve.model_meta import ModelMeta

log = logging.getLogger(__name__)

TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
MAX_BYTES = SMALL_MEMBER_MAX_BYTES
"""Largest model.onnx stored: what ``make backup`` / restore carries for a version document."""
TREE_MODULES = ("sklearn.tree", "sklearn.ensemble", "xgboost", "lightgbm")
_registered = False


class Float32Classifier(ClassifierMixin, BaseEstimator):
    """A tree classifier whose graph casts its input to float32 (what the tree itself does)."""

    def __init__(self, estimator: Any = None) -> None:
        self.estimator = estimator

    @property
    def classes_(self) -> Any:
        return self.estimator.classes_


class Float32Regressor(RegressorMixin, BaseEstimator):
    """A tree regressor whose graph casts its input to float32."""

    def __init__(self, estimator: Any = None) -> None:
        self.estimator = estimator


def compile_pipeline(pipeline: Any, meta: ModelMeta) -> tuple[bytes | None, dict[str, Any]]:
    """The serialized ONNX graph of ``pipeline`` and its meta.json record (without hashes);
    (None, {"file": None, "reason": ...}) when no graph that matches the pipeline could be made."""
    reasons = []
    for precision in ("mixed", "float32"):
        try:
            onx = convert(pipeline, len(meta.features), precision)
        except Exception as exc:  # noqa: BLE001 - any converter failure: not compiled, say why
            reasons.append(f"{precision}: {type(exc).__name__}: {_short(exc)}")
            continue
        raw = onx.SerializeToString()
        if len(raw) > MAX_BYTES:
            reasons.append(f"{precision}: the graph is {len(raw) / 2**20:.1f} MiB, beyond the "
                           f"{MAX_BYTES / 2**20:.0f} MiB a version document may have (backups carry no more)")
            break
        outputs = output_names(onx, meta)
        try:
            verdict = verify(raw, outputs, pipeline, meta)
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"{precision}: ONNX Runtime failed: {type(exc).__name__}: {_short(exc)}")
            continue
        if verdict.ok:
            return raw, {
                **({"rejected": reasons} if reasons else {}),
                "file": "model.onnx",
                "format": "onnx",
                "precision": precision,
                "outputs": outputs,
                "opset": {domain or "ai.onnx": version for domain, version in TARGET_OPSET.items()},
                "verified_rows": verdict.rows,
                "max_difference": verdict.max_difference,
                "library_versions": library_versions(),
                "reason": None,
            }
        reasons.append(f"{precision}: does not match the pipeline: {verdict.reason}")
    return None, {"file": None, "reason": "; ".join(reasons), "library_versions": library_versions()}


def convert(pipeline: Any, n_features: int, precision: str = "mixed") -> Any:
    """The ONNX model of ``pipeline`` (ZipMap off, classes as scikit-learn's ``classes_``)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    register_converters()
    model = with_float32_trees(pipeline) if precision == "mixed" else pipeline
    kind = DoubleTensorType if precision == "mixed" else FloatTensorType
    with warnings.catch_warnings(), _replacing_stock_converters():
        warnings.simplefilter("ignore")
        return convert_sklearn(model, initial_types=[("X", kind([None, n_features]))],
                               options=_no_zipmap(model), target_opset=TARGET_OPSET)


def output_names(onx: Any, meta: ModelMeta) -> dict[str, str | None]:
    """Which graph output is what: a classifier's label and probabilities, a regressor's value."""
    names = [output.name for output in onx.graph.output]
    if meta.is_classifier:
        return {"label": names[0], "probabilities": names[1] if len(names) > 1 else None}
    return {"value": names[0]}


def verify(raw: bytes, outputs: dict[str, str | None], pipeline: Any, meta: ModelMeta) -> Verdict:
    """Run the graph in ONNX Runtime on the verification rows and compare with the pipeline."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    rows = verification_rows(meta, pipeline)
    return verify_session(session, outputs, pipeline, meta, rows, dtype)


def verify_session(session: Any, outputs: dict[str, str | None], pipeline: Any, meta: ModelMeta,
                   rows: np.ndarray, dtype: Any) -> Verdict:
    """The check the API makes at load, here for the trainer and the tests."""
    wanted = [name for name in outputs.values() if name]  # [label, probabilities] or [value], as the API runs it
    got = session.run(wanted, {session.get_inputs()[0].name: rows.astype(dtype)})
    return check_outputs(meta, pipeline, rows, got)


def with_float32_trees(model: Any) -> Any:
    """A copy of ``model`` with every tree model wrapped in Float32Classifier/Regressor."""
    model = copy.deepcopy(model)
    return _wrap(model)


def _wrap(model: Any) -> Any:
    if _is_tree_model(model):
        return Float32Classifier(model) if is_classifier(model) else Float32Regressor(model)
    steps = getattr(model, "steps", None)
    if steps is not None:
        model.steps = [(name, _wrap(step)) for name, step in steps]
        return model
    parts = getattr(model, "transformer_list", None)
    if parts is not None:
        model.transformer_list = [(name, _wrap(part)) for name, part in parts]
        return model
    if _kind(model) == ("tpot.builtin_modules.estimatortransformer", "EstimatorTransformer"):
        model.estimator = _wrap(model.estimator)
    return model


def _is_tree_model(model: Any) -> bool:
    module = type(model).__module__
    if not module.startswith(TREE_MODULES) or not hasattr(model, "predict"):
        return False
    if module.startswith(("xgboost", "lightgbm")):
        return True
    if hasattr(model, "tree_") or hasattr(model, "_predictors"):
        return True
    estimators = getattr(model, "estimators_", None)
    if estimators is None:
        return False
    flat = np.asarray(estimators, dtype=object).ravel().tolist()
    return bool(flat) and all(hasattr(e, "tree_") or _is_tree_model(e) for e in flat)


def _no_zipmap(model: Any) -> dict[Any, dict[str, Any]]:
    """ZipMap off for every classifier step of every pipeline in the graph (probabilities as one
    tensor), and no options at all for a selector around a classifier (RFE, SelectFromModel):
    skl2onnx's pipeline parser gives every step scikit-learn's is_classifier calls a classifier a
    ZipMap option unless one is set, and then the selector's converter refuses it."""
    from sklearn.feature_selection import SelectorMixin

    options: dict[Any, dict[str, Any]] = {}

    def visit(node: Any) -> None:
        if is_classifier(node):
            options[id(node)] = {} if isinstance(node, SelectorMixin) else {"zipmap": False}
        for _, child in getattr(node, "steps", []) or []:
            visit(child)
        for _, child in getattr(node, "transformer_list", []) or []:
            visit(child)

    visit(model)
    return options


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import skl2onnx

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "skl2onnx": skl2onnx.__version__}
    try:
        import onnxmltools

        versions["onnxmltools"] = onnxmltools.__version__
    except ImportError:  # pragma: no cover - pinned in requirements.lock
        pass
    return versions


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(step: Any) -> tuple[str, str]:
    return type(step).__module__, type(step).__qualname__


# --- converters ----------------------------------------------------------------------------
def register_converters() -> None:
    """Register the converters skl2onnx lacks, and onnxmltools' for XGBoost and LightGBM (once)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx._parse import sklearn_parsers_map
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    from . import converters

    transformers, replaced = _our_transformers()
    for cls in replaced:  # skl2onnx's own, put back after
        _STOCK[cls] = (sklearn_operator_name_map.get(cls), sklearn_parsers_map.get(cls))
    for cls, convert_fn in transformers.items():
        update_registered_converter(cls, f"Tpotserve{cls.__name__}", converters.transformer_shape(cls),
                                    convert_fn, overwrite=True, parser=converters.transformer_parser)
    for cls in _STOCK:
        _OURS[cls] = (sklearn_operator_name_map.get(cls), sklearn_parsers_map.get(cls))
        _put(cls, _STOCK[cls])
    update_registered_converter(Float32Classifier, "TpotserveFloat32Classifier",
                                calculate_linear_classifier_output_shapes, converters.float32_classifier,
                                options={"zipmap": [False, True], "nocl": [False, True]})
    update_registered_converter(Float32Regressor, "TpotserveFloat32Regressor",
                                calculate_linear_regressor_output_shapes, converters.float32_regressor)
    _register_boosters(update_registered_converter, calculate_linear_classifier_output_shapes,
                       calculate_linear_regressor_output_shapes)
    converters.patch_protobuf_booleans()
    _registered = True


def _our_transformers() -> tuple[dict[type, Any], tuple[type, ...]]:
    """Our converter for each transformer class, and the classes among them skl2onnx converts
    itself (ours replace those only where the stock one would be wrong)."""
    from sklearn.cluster import FeatureAgglomeration
    from sklearn.decomposition import FastICA
    from sklearn.feature_selection import RFE, RFECV, SelectFromModel
    from sklearn.kernel_approximation import Nystroem, RBFSampler
    from sklearn.preprocessing import KBinsDiscretizer, Normalizer
    from tpot.builtin_modules import (
        ColumnOneHotEncoder,
        ColumnOrdinalEncoder,
        EstimatorTransformer,
        PassKBinsDiscretizer,
        Passthrough,
        SkipTransformer,
        ZeroCount,
    )

    from . import converters

    return {
        Passthrough: converters.passthrough,
        SkipTransformer: converters.skip,
        ZeroCount: converters.zero_count,
        EstimatorTransformer: converters.estimator_transformer,
        ColumnOneHotEncoder: converters.column_one_hot,
        ColumnOrdinalEncoder: converters.column_ordinal,
        FastICA: converters.fast_ica,
        RBFSampler: converters.rbf_sampler,
        FeatureAgglomeration: converters.feature_agglomeration,
        Nystroem: converters.nystroem,
        Normalizer: converters.normalizer,
        KBinsDiscretizer: converters.k_bins,
        RFE: converters.selector,
        RFECV: converters.selector,
        SelectFromModel: converters.selector,
        PassKBinsDiscretizer: converters.pass_k_bins,
    }, (Normalizer, KBinsDiscretizer, RFE, RFECV, SelectFromModel)


_STOCK: dict[type, tuple[Any, Any]] = {}
_OURS: dict[type, tuple[Any, Any]] = {}


def _put(cls: type, registration: tuple[Any, Any]) -> None:
    from skl2onnx._parse import sklearn_parsers_map
    from skl2onnx._supported_operators import sklearn_operator_name_map

    alias, parser = registration
    if alias is None:
        sklearn_operator_name_map.pop(cls, None)
    else:
        sklearn_operator_name_map[cls] = alias
    if parser is None:
        sklearn_parsers_map.pop(cls, None)
    else:
        sklearn_parsers_map[cls] = parser


@contextmanager
def _replacing_stock_converters() -> Iterator[None]:
    """This module's Normalizer and KBinsDiscretizer converters for one conversion; skl2onnx's
    own again afterwards, so nothing else in the process (or a test of the stock ones) gets ours."""
    for cls, registration in _OURS.items():
        _put(cls, registration)
    try:
        yield
    finally:
        for cls, registration in _STOCK.items():
            _put(cls, registration)


def _register_boosters(register: Any, classifier_shapes: Any, regressor_shapes: Any) -> None:
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

    zipmap = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from xgboost import XGBClassifier, XGBRegressor

        register(XGBClassifier, "XGBoostXGBClassifier", classifier_shapes, convert_xgboost, options=zipmap)
        register(XGBRegressor, "XGBoostXGBRegressor", regressor_shapes, convert_xgboost)
    except ImportError:  # pragma: no cover
        pass
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor

        register(LGBMClassifier, "LightGbmLGBMClassifier", classifier_shapes, convert_lightgbm, options=zipmap)
        register(LGBMRegressor, "LightGbmLGBMRegressor", regressor_shapes, convert_lightgbm)
    except ImportError:  # pragma: no cover
        pass
