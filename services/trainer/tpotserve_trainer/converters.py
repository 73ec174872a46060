"""skl2onnx converters for the steps it has none for (or a wrong one), used by ``compiler``.

Each keeps the dtype of its input (float64 in the mixed graph, float32 in the float32 one) and
does what the step's own ``transform`` does, in the same order where order matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto
from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
from skl2onnx.algebra.onnx_ops import (
    OnnxAbs,
    OnnxAdd,
    OnnxCast,
    OnnxConcat,
    OnnxCos,
    OnnxDiv,
    OnnxEqual,
    OnnxExp,
    OnnxIdentity,
    OnnxMatMul,
    OnnxMax,
    OnnxMul,
    OnnxNot,
    OnnxReduceMaxApi18,
    OnnxReduceSumApi11,
    OnnxReshapeApi13,
    OnnxSlice,
    OnnxSub,
    OnnxWhere,
)
from skl2onnx.common.data_types import guess_proto_type


def transformer_shape(cls: type) -> Callable[[Any], None]:
    """A shape calculator: the input's type, with the step's output width."""

    def calculate(operator: Any) -> None:
        kind = operator.inputs[0].type.__class__
        n_in = operator.inputs[0].get_second_dimension()
        operator.outputs[0].type = kind([None, output_width(operator.raw_operator, n_in)])

    return calculate


def output_width(step: Any, n_in: int | None) -> int | None:
    """How many columns ``step`` outputs for ``n_in`` input columns."""
    name = type(step).__name__
    if name in ("Passthrough", "Normalizer", "ColumnOrdinalEncoder"):
        return n_in
    if name == "SkipTransformer":
        return 0
    if name in ("RFE", "RFECV", "SelectFromModel"):
        return int(np.sum(step.get_support()))
    if name == "KBinsDiscretizer":
        return len(step.bin_edges_) if step.encode == "ordinal" else int(np.sum(step.n_bins_))
    if name == "PassKBinsDiscretizer":
        try:
            return int(step.transform(np.zeros((1, n_in))).shape[1]) if n_in is not None else None
        except Exception:  # noqa: BLE001 - the shape is a hint; the graph is checked anyway
            return None
    if name == "ZeroCount":
        return None if n_in is None else n_in + 2
    if name == "FastICA":
        return int(step.components_.shape[0])
    if name == "RBFSampler":
        return int(step.random_weights_.shape[1])
    if name == "Nystroem":
        return int(step.normalization_.shape[0])
    if name == "FeatureAgglomeration":
        return int(len(np.unique(step.labels_)))
    if name == "EstimatorTransformer":
        est = step.estimator
        method = _estimator_method(step)
        width = len(est.classes_) if method == "predict_proba" else 1
        return width + n_in if step.passthrough and n_in is not None else width
    if name == "ColumnOneHotEncoder":
        if not len(step.columns_):
            return n_in
        width = sum(len(c) for c in step.enc.categories_)
        return width if n_in is None or len(step.columns_) == n_in else n_in - len(step.columns_) + width
    return None


def _dtype(operator: Any) -> tuple[int, type]:
    proto = guess_proto_type(operator.inputs[0].type)
    return proto, (np.float64 if proto == TensorProto.DOUBLE else np.float32)


def _out(operator: Any) -> list[str]:
    return [operator.outputs[0].full_name]


def passthrough(scope: Any, operator: Any, container: Any) -> None:
    OnnxIdentity(operator.inputs[0], output_names=_out(operator),
                 op_version=container.target_opset).add_to(scope, container)


def skip(scope: Any, operator: Any, container: Any) -> None:
    """SkipTransformer: no columns (a FeatureUnion part that contributes nothing)."""
    opv = container.target_opset
    OnnxSlice(operator.inputs[0], np.array([0], dtype=np.int64), np.array([0], dtype=np.int64),
              np.array([1], dtype=np.int64), output_names=_out(operator), op_version=opv).add_to(scope, container)


def zero_count(scope: Any, operator: Any, container: Any) -> None:
    """ZeroCount: [zeros per row, non-zeros per row, X]."""
    opv = container.target_opset
    proto, dtype = _dtype(operator)
    X = operator.inputs[0]
    n = X.get_second_dimension()
    if n is None:
        raise NotImplementedError("ZeroCount needs a known input width")
    nonzero = OnnxCast(OnnxNot(OnnxEqual(X, np.array([0], dtype=dtype), op_version=opv), op_version=opv),
                       to=proto, op_version=opv)
    count = OnnxReduceSumApi11(nonzero, axes=[1], keepdims=1, op_version=opv)
    zeros = OnnxSub(np.array([n], dtype=dtype), count, op_version=opv)
    OnnxConcat(zeros, count, X, axis=1, output_names=_out(operator), op_version=opv).add_to(scope, container)


def _estimator_method(step: Any) -> str:
    if step.method != "auto":
        return step.method
    est = step.estimator
    if type(est).__name__ in ("Float32Classifier", "Float32Regressor"):
        est = est.estimator  # the tree model inside the compiler's float32 wrapper
    for method in ("predict_proba", "decision_function", "predict"):
        if hasattr(est, method):
            return method
    raise NotImplementedError("EstimatorTransformer's estimator has no method to transform with")


def estimator_transformer(scope: Any, operator: Any, container: Any) -> None:
    """EstimatorTransformer: the inner estimator's predict_proba (or predict) as columns, then
    X when ``passthrough``."""
    opv = container.target_opset
    proto, _ = _dtype(operator)
    step = operator.raw_operator
    X = operator.inputs[0]
    method = _estimator_method(step)
    if method == "decision_function":
        raise NotImplementedError("EstimatorTransformer(method='decision_function') is not compiled")
    estimator, source = step.estimator, X
    if type(estimator).__name__ in ("Float32Classifier", "Float32Regressor"):
        # The compiler's float32 wrapper, unwrapped here: a sub-estimator inside a sub-estimator
        # trips skl2onnx's operator naming. The same cast, then the tree model itself.
        estimator, source = estimator.estimator, _as_float32(scope, operator, container)
    classifier = hasattr(estimator, "classes_")
    options = {"zipmap": False} if classifier else None
    sub = OnnxSubEstimator(estimator, source, op_version=opv, options=options)
    if method == "predict_proba":
        out = OnnxCast(sub[1], to=proto, op_version=opv)
    elif classifier:
        labels = sub[0]
        out = OnnxReshapeApi13(OnnxCast(labels, to=proto, op_version=opv), np.array([-1, 1], dtype=np.int64),
                               op_version=opv)
        if not np.issubdtype(np.asarray(step.estimator.classes_).dtype, np.number):
            raise NotImplementedError("EstimatorTransformer(predict) of a classifier with non-numeric classes")
    else:
        out = OnnxReshapeApi13(OnnxCast(sub, to=proto, op_version=opv), np.array([-1, 1], dtype=np.int64),
                               op_version=opv)
    if step.passthrough:
        out = OnnxConcat(out, X, axis=1, op_version=opv)
    OnnxIdentity(out, output_names=_out(operator), op_version=opv).add_to(scope, container)


def _split_columns(step: Any, X: Any, n: int, opv: int) -> tuple[list[Any], Any | None]:
    """The selected columns one by one, and the others (in order) as one tensor or None."""
    columns = [int(c) for c in step.columns_]
    if any(not isinstance(c, (int, np.integer)) for c in step.columns_):
        raise NotImplementedError("encoded columns named, not numbered")
    picked = [OnnxSlice(X, np.array([c], dtype=np.int64), np.array([c + 1], dtype=np.int64),
                        np.array([1], dtype=np.int64), op_version=opv) for c in columns]
    rest = [c for c in range(n) if c not in set(columns)]
    if not rest:
        return picked, None
    from skl2onnx.algebra.onnx_ops import OnnxGather

    others = OnnxGather(X, np.array(rest, dtype=np.int64), axis=1, op_version=opv)
    return picked, others


def column_one_hot(scope: Any, operator: Any, container: Any) -> None:
    """ColumnOneHotEncoder: the other columns, then one 0/1 column per category of each
    encoded column (an unseen value: all zeros, as handle_unknown='ignore'/'infrequent_if_exist'
    without infrequent categories)."""
    opv = container.target_opset
    proto, dtype = _dtype(operator)
    step = operator.raw_operator
    X = operator.inputs[0]
    if not len(step.columns_):
        return passthrough(scope, operator, container)
    enc = step.enc
    if enc.drop is not None or getattr(enc, "infrequent_categories_", None) and any(
            c is not None for c in enc.infrequent_categories_):
        raise NotImplementedError("ColumnOneHotEncoder with drop or infrequent categories")
    if enc.handle_unknown == "error":
        raise NotImplementedError("ColumnOneHotEncoder(handle_unknown='error') refuses unseen values; a graph cannot")
    n = X.get_second_dimension()
    picked, others = _split_columns(step, X, n, opv)
    parts = [] if others is None else [others]
    for column, categories in zip(picked, enc.categories_):
        for value in np.asarray(categories, dtype=float):
            if not np.isfinite(value):
                raise NotImplementedError("a missing-value category")
            parts.append(OnnxCast(OnnxEqual(column, np.array([value], dtype=dtype), op_version=opv),
                                  to=proto, op_version=opv))
    OnnxConcat(*parts, axis=1, output_names=_out(operator), op_version=opv).add_to(scope, container)


def column_ordinal(scope: Any, operator: Any, container: Any) -> None:
    """ColumnOrdinalEncoder: each encoded column as its category's index (an unseen value:
    unknown_value, with handle_unknown='use_encoded_value'), then hstack(others, encoded)."""
    opv = container.target_opset
    proto, dtype = _dtype(operator)
    step = operator.raw_operator
    X = operator.inputs[0]
    if not len(step.columns_):
        return passthrough(scope, operator, container)
    enc = step.enc
    if enc.handle_unknown != "use_encoded_value":
        raise NotImplementedError("ColumnOrdinalEncoder(handle_unknown='error') refuses unseen values; a graph cannot")
    if getattr(enc, "infrequent_categories_", None) and any(c is not None for c in enc.infrequent_categories_):
        raise NotImplementedError("ColumnOrdinalEncoder with infrequent categories")
    n = X.get_second_dimension()
    picked, others = _split_columns(step, X, n, opv)
    parts = [] if others is None else [others]
    unknown = float(enc.unknown_value)
    for column, categories in zip(picked, enc.categories_):
        encoded: Any = np.array([[unknown]], dtype=dtype)
        for index, value in enumerate(np.asarray(categories, dtype=float)):
            if not np.isfinite(value):
                raise NotImplementedError("a missing-value category")
            encoded = OnnxWhere(OnnxEqual(column, np.array([value], dtype=dtype), op_version=opv),
                                np.array([[index]], dtype=dtype), encoded, op_version=opv)
        parts.append(encoded)
    OnnxConcat(*parts, axis=1, output_names=_out(operator), op_version=opv).add_to(scope, container)


def selector(scope: Any, operator: Any, container: Any) -> None:
    """RFE, RFECV, SelectFromModel: the columns ``get_support()`` keeps. Converted here because
    skl2onnx parses them as classifiers when their estimator is one (scikit-learn's is_classifier
    says so) and then refuses its own ZipMap option on them."""
    from skl2onnx.algebra.onnx_ops import OnnxGather

    opv = container.target_opset
    kept = np.flatnonzero(operator.raw_operator.get_support()).astype(np.int64)
    if not len(kept):
        raise NotImplementedError("a selector that keeps no column")
    OnnxGather(operator.inputs[0], kept, axis=1, output_names=_out(operator), op_version=opv).add_to(scope, container)


def fast_ica(scope: Any, operator: Any, container: Any) -> None:
    """FastICA.transform: (X - mean_) @ components_.T (no mean when whiten is off)."""
    opv = container.target_opset
    _, dtype = _dtype(operator)
    step = operator.raw_operator
    X: Any = operator.inputs[0]
    if step.whiten:
        X = OnnxSub(X, step.mean_.astype(dtype), op_version=opv)
    OnnxMatMul(X, step.components_.T.astype(dtype), output_names=_out(operator),
               op_version=opv).add_to(scope, container)


def rbf_sampler(scope: Any, operator: Any, container: Any) -> None:
    """RBFSampler.transform: cos(X @ random_weights_ + random_offset_) * sqrt(2 / n_components)."""
    opv = container.target_opset
    _, dtype = _dtype(operator)
    step = operator.raw_operator
    projection = OnnxAdd(OnnxMatMul(operator.inputs[0], step.random_weights_.astype(dtype), op_version=opv),
                         step.random_offset_.astype(dtype), op_version=opv)
    OnnxMul(OnnxCos(projection, op_version=opv), np.array([(2.0 / step.n_components) ** 0.5], dtype=dtype),
            output_names=_out(operator), op_version=opv).add_to(scope, container)


def nystroem(scope: Any, operator: Any, container: Any) -> None:
    """Nystroem.transform: kernel(X, components_) @ normalization_.T, for the kernels TPOT
    draws (rbf, linear, polynomial, sigmoid, cosine, ...): rbf, linear and poly here."""
    opv = container.target_opset
    _, dtype = _dtype(operator)
    step = operator.raw_operator
    X = operator.inputs[0]
    C = step.components_.astype(dtype)
    params = step._get_kernel_params()
    kernel = step.kernel
    if kernel == "rbf":
        gamma = params.get("gamma")
        gamma = 1.0 / C.shape[1] if gamma is None else gamma
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, clipped at 0 as euclidean_distances does.
        x2 = OnnxReduceSumApi11(OnnxMul(X, X, op_version=opv), axes=[1], keepdims=1, op_version=opv)
        xc = OnnxMatMul(X, C.T, op_version=opv)
        d2 = OnnxAdd(OnnxSub(x2, OnnxMul(xc, np.array([2], dtype=dtype), op_version=opv), op_version=opv),
                     (C * C).sum(axis=1)[None, :].astype(dtype), op_version=opv)
        d2 = OnnxMax(d2, np.array([0], dtype=dtype), op_version=opv)
        K = OnnxExp(OnnxMul(d2, np.array([-gamma], dtype=dtype), op_version=opv), op_version=opv)
    elif kernel == "linear":
        K = OnnxMatMul(X, C.T, op_version=opv)
    elif kernel == "poly":
        gamma = params.get("gamma")
        gamma = 1.0 / C.shape[1] if gamma is None else gamma
        from skl2onnx.algebra.onnx_ops import OnnxPow

        base = OnnxAdd(OnnxMul(OnnxMatMul(X, C.T, op_version=opv), np.array([gamma], dtype=dtype), op_version=opv),
                       np.array([params.get("coef0", 1)], dtype=dtype), op_version=opv)
        K = OnnxPow(base, np.array([params.get("degree", 3)], dtype=dtype), op_version=opv)
    else:
        raise NotImplementedError(f"Nystroem(kernel={kernel!r}) is not compiled")
    OnnxMatMul(K, step.normalization_.T.astype(dtype), output_names=_out(operator),
               op_version=opv).add_to(scope, container)


def feature_agglomeration(scope: Any, operator: Any, container: Any) -> None:
    """FeatureAgglomeration.transform with np.mean pooling: each cluster's mean column."""
    opv = container.target_opset
    _, dtype = _dtype(operator)
    step = operator.raw_operator
    if step.pooling_func is not np.mean:
        raise NotImplementedError("FeatureAgglomeration with a pooling function other than np.mean")
    labels = np.asarray(step.labels_)
    clusters = np.unique(labels)
    weights = np.zeros((len(labels), len(clusters)), dtype=dtype)
    for j, label in enumerate(clusters):
        members = labels == label
        weights[members, j] = 1.0 / members.sum()
    OnnxMatMul(operator.inputs[0], weights, output_names=_out(operator), op_version=opv).add_to(scope, container)


def normalizer(scope: Any, operator: Any, container: Any) -> None:
    """Normalizer: X / norm per row, the norm of |X| (l1: sum, l2: root of the sum of squares,
    max: the largest |value|), a zero norm taken as 1 -- skl2onnx's own divides by max(x)."""
    opv = container.target_opset
    _, dtype = _dtype(operator)
    step = operator.raw_operator
    X = operator.inputs[0]
    absolute = OnnxAbs(X, op_version=opv)
    if step.norm == "l1":
        norm = OnnxReduceSumApi11(absolute, axes=[1], keepdims=1, op_version=opv)
    elif step.norm == "l2":
        from skl2onnx.algebra.onnx_ops import OnnxSqrt

        norm = OnnxSqrt(OnnxReduceSumApi11(OnnxMul(X, X, op_version=opv), axes=[1], keepdims=1, op_version=opv),
                        op_version=opv)
    elif step.norm == "max":
        norm = OnnxReduceMaxApi18(absolute, axes=[1], keepdims=1, op_version=opv)
    else:
        raise NotImplementedError(f"Normalizer(norm={step.norm!r})")
    zero = OnnxEqual(norm, np.array([0], dtype=dtype), op_version=opv)
    safe = OnnxWhere(zero, np.array([1], dtype=dtype), norm, op_version=opv)
    OnnxDiv(X, safe, output_names=_out(operator), op_version=opv).add_to(scope, container)


def _as_float32(scope: Any, operator: Any, container: Any) -> Any:
    """A typed float32 copy of the operator's input (a Cast node), for a sub-estimator."""
    from skl2onnx.common.data_types import FloatTensorType

    source = operator.inputs[0]
    if guess_proto_type(source.type) == TensorProto.FLOAT:
        return source
    X32 = scope.declare_local_variable("X32", FloatTensorType([None, source.get_second_dimension()]))
    container.add_node("Cast", [source.full_name], [X32.full_name], name=scope.get_unique_operator_name("Cast32"),
                       to=TensorProto.FLOAT)
    return X32


def transformer_parser(scope: Any, model: Any, inputs: list[Any], custom_parsers: Any = None) -> list[Any]:
    """One output, the input's type: for a transformer skl2onnx would parse as a clusterer
    (FeatureAgglomeration is a ClusterMixin, so it gets a label and scores)."""
    from skl2onnx._supported_operators import get_model_alias

    operator = scope.declare_local_operator(get_model_alias(type(model)), model)
    operator.inputs = inputs
    operator.outputs.append(scope.declare_local_variable("variable", inputs[0].type.__class__()))
    return operator.outputs


def k_bins(scope: Any, operator: Any, container: Any) -> None:
    """KBinsDiscretizer.transform: each column's bin as searchsorted(interior edges, x,
    side='right') -- the count of interior edges <= x, compared in the graph's dtype (skl2onnx's
    own compares in float32: a value just below an edge lands on it) -- as the bin index
    (ordinal) or one 0/1 column per bin (onehot-dense)."""
    opv = container.target_opset
    parts = _k_bins_parts(operator.raw_operator, operator.inputs[0], operator, opv)
    OnnxConcat(*parts, axis=1, output_names=_out(operator), op_version=opv).add_to(scope, container)


def _k_bins_parts(step: Any, X: Any, operator: Any, opv: int) -> list[Any]:
    from skl2onnx.algebra.onnx_ops import OnnxGreaterOrEqual

    proto, dtype = _dtype(operator)
    if step.encode not in ("ordinal", "onehot-dense"):
        raise NotImplementedError(f"KBinsDiscretizer(encode={step.encode!r}): sparse output")
    parts = []
    for column, edges in enumerate(step.bin_edges_):
        x = OnnxSlice(X, np.array([column], dtype=np.int64), np.array([column + 1], dtype=np.int64),
                      np.array([1], dtype=np.int64), op_version=opv)
        interior = np.asarray(edges, dtype=float)[1:-1]
        if len(interior):
            above = OnnxCast(OnnxGreaterOrEqual(x, interior.astype(dtype)[None, :], op_version=opv), to=proto,
                             op_version=opv)
            index = OnnxReduceSumApi11(above, axes=[1], keepdims=1, op_version=opv)
        else:
            index = OnnxMul(x, np.array([0], dtype=dtype), op_version=opv)
        if step.encode == "ordinal":
            parts.append(index)
        else:
            bins = np.arange(int(step.n_bins_[column]), dtype=dtype)[None, :]
            parts.append(OnnxCast(OnnxEqual(index, bins, op_version=opv), to=proto, op_version=opv))
    return parts


def pass_k_bins(scope: Any, operator: Any, container: Any) -> None:
    """TPOT's PassKBinsDiscretizer: KBinsDiscretizer on the columns with enough distinct values,
    then the others passed through (its ColumnTransformer's order)."""
    from skl2onnx.algebra.onnx_ops import OnnxGather

    opv = container.target_opset
    step = operator.raw_operator
    X = operator.inputs[0]
    selected = [int(c) for c in step.selected_columns_]
    others = [int(c) for c in step.not_selected_columns_]
    parts: list[Any] = []
    if selected:
        discretizer = step.transformer.named_transformers_["discretizer"]
        picked = OnnxGather(X, np.array(selected, dtype=np.int64), axis=1, op_version=opv)
        parts.extend(_k_bins_parts(discretizer, picked, operator, opv))
    if others:
        parts.append(OnnxGather(X, np.array(others, dtype=np.int64), axis=1, op_version=opv))
    if not parts:
        raise NotImplementedError("PassKBinsDiscretizer with no columns")
    OnnxConcat(*parts, axis=1, output_names=_out(operator), op_version=opv).add_to(scope, container)


def float32_classifier(scope: Any, operator: Any, container: Any) -> None:
    """A tree classifier on float32(X), as scikit-learn runs it; probabilities back in the
    graph's dtype."""
    opv = container.target_opset
    proto, _ = _dtype(operator)
    X32 = _as_float32(scope, operator, container)
    sub = OnnxSubEstimator(operator.raw_operator.estimator, X32, op_version=opv, options={"zipmap": False})
    OnnxIdentity(sub[0], output_names=[operator.outputs[0].full_name], op_version=opv).add_to(scope, container)
    OnnxCast(sub[1], to=proto, output_names=[operator.outputs[1].full_name],
             op_version=opv).add_to(scope, container)


def float32_regressor(scope: Any, operator: Any, container: Any) -> None:
    """A tree regressor on float32(X); its value back in the graph's dtype."""
    opv = container.target_opset
    proto, _ = _dtype(operator)
    X32 = _as_float32(scope, operator, container)
    sub = OnnxSubEstimator(operator.raw_operator.estimator, X32, op_version=opv)
    OnnxCast(sub, to=proto, output_names=_out(operator), op_version=opv).add_to(scope, container)


def patch_protobuf_booleans() -> None:
    """skl2onnx hands numpy/Python booleans to onnx's make_attribute as ints (HistGradientBoosting's
    missing-value tracks, Python False mixed with numpy integers); protobuf 7 refuses them. Turn
    such lists into 0/1 ints before the node is made."""
    from skl2onnx.common import _container

    add_node = _container.ModelComponentContainer.add_node
    if getattr(add_node, "_tpotserve_patched", False):
        return

    def patched(self: Any, op_type: Any, inputs: Any, outputs: Any, op_domain: str = "", op_version: Any = None,
                **attrs: Any) -> Any:
        for key, value in list(attrs.items()):
            if isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value) and all(
                    isinstance(v, (bool, np.bool_, int, np.integer)) for v in value):
                attrs[key] = [int(v) for v in value]
        return add_node(self, op_type, inputs, outputs, op_domain=op_domain, op_version=op_version, **attrs)

    patched._tpotserve_patched = True  # type: ignore[attr-defined]
    _container.ModelComponentContainer.add_node = patched
