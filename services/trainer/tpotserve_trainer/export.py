"""A fitted pipeline as readable steps and as Python code that rebuilds it.

TPOT 1.x dropped ``export()``; a ``repr`` is neither readable (TPOT's pipelines
nest unions of unions) nor always valid Python (functions print as
``<function f_classif at 0x...>``, numpy scalars as ``np.str_('gini')``). This
walks the estimator through ``get_params(deep=False)``, keeps only the
parameters that differ from the class's defaults, and imports every class and
function from its shortest public module. ``code`` is checked by running it:
the rebuilt estimator must have the same parameters as the original.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone

_MISSING = object()


class NotExportable(Exception):
    """A parameter value with no Python spelling here (a lambda, an open file...)."""


def steps(estimator: Any) -> list[dict[str, Any]]:
    """The pipeline as a list of steps: name, class, module, changed parameters, nested steps."""
    named = _named_children(estimator)
    if named is None:
        return [_describe("model", estimator)]
    return [_describe(name, child) for name, child in named]


def _describe(name: str, estimator: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": name, "class": type(estimator).__name__, "module": _public_module(type(estimator))}
    params, nested = {}, []
    for key, value in _changed_params(estimator).items():
        if key in ("steps", "transformer_list", "estimators") and _named_children(estimator) is not None:
            continue
        if isinstance(value, BaseEstimator):
            nested.append(_describe(key, value))
        else:
            params[key] = _plain(value)
    children = _named_children(estimator)
    if children is not None:
        nested = [_describe(child_name, child) for child_name, child in children] + nested
    step["params"] = params
    if nested:
        step["steps"] = nested
    return step


def _named_children(estimator: Any) -> list[tuple[str, Any]] | None:
    """(name, estimator) pairs of a composite: Pipeline steps, FeatureUnion members, voters."""
    for attribute in ("steps", "transformer_list", "estimators"):
        value = getattr(estimator, attribute, None)
        if isinstance(value, list) and value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            return [(str(n), e) for n, e in value]
    return None


def code(estimator: Any) -> str:
    """Python source that builds ``estimator`` (unfitted) as ``pipeline``; raises NotExportable."""
    imports: set[tuple[str, str]] = set()
    expression = _source(estimator, imports, indent=0)
    lines = ["import numpy as np"] if any(m == "numpy" for m, _ in imports) else []
    for module in sorted({m for m, _ in imports if m != "numpy"}):
        names = ", ".join(sorted(n for m, n in imports if m == module))
        lines.append(f"from {module} import {names}")
    return "\n".join(lines) + ("\n\n" if lines else "") + f"pipeline = {expression}\n"


def verified_code(estimator: Any) -> tuple[str | None, str | None]:
    """(code, None) when running the code rebuilds ``estimator``'s parameters; else (None, why)."""
    try:
        source = code(estimator)
    except NotExportable as exc:
        return None, str(exc)
    namespace: dict[str, Any] = {}
    try:
        exec(compile(source, "<export>", "exec"), namespace)  # noqa: S102 - our own generated code
        rebuilt = namespace["pipeline"]
    except Exception as exc:  # noqa: BLE001
        return None, f"the generated code does not run: {type(exc).__name__}: {exc}"
    if _fingerprint(rebuilt) != _fingerprint(clone(estimator)):
        return None, "the generated code builds an estimator with other parameters"
    return source, None


def _fingerprint(estimator: Any) -> str:
    """The unfitted estimator's parameters, spelled out (repr of every nested value)."""
    return repr(sorted((key, _fingerprint(v) if isinstance(v, BaseEstimator) else repr(_spelled(v)))
                       for key, v in estimator.get_params(deep=True).items()))


def _spelled(value: Any) -> Any:
    """A parameter value for comparison: a composite's (name, estimator) list by its names
    (the estimators themselves are compared through their own deep parameters)."""
    if isinstance(value, list) and value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return [(str(name), type(e).__name__) for name, e in value]
    return _plain(value)


def _source(value: Any, imports: set[tuple[str, str]], indent: int) -> str:
    if isinstance(value, BaseEstimator) or _is_plain_object(value):
        cls = type(value)
        imports.add((_public_module(cls), cls.__name__))
        params = _changed_params(value) if isinstance(value, BaseEstimator) else _init_params(value)
        if not params:
            return f"{cls.__name__}()"
        pad = " " * (indent + 4)
        inner = ",\n".join(f"{pad}{key}={_source(v, imports, indent + 4)}" for key, v in params.items())
        return f"{cls.__name__}(\n{inner},\n{' ' * indent})"
    if isinstance(value, (list, tuple)):
        if isinstance(value, tuple):
            items = [_source(v, imports, indent) for v in value]
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        items = [_source(v, imports, indent + 4) for v in value]
        if not items:
            return "[]"
        pad = " " * (indent + 4)
        return "[\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_source(k, imports, indent)}: {_source(v, imports, indent)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, np.ndarray):
        imports.add(("numpy", "np"))
        return f"np.array({value.tolist()!r})"
    if inspect.isfunction(value) or inspect.isclass(value) or isinstance(value, np.ufunc):
        name = getattr(value, "__name__", "")
        if not name or name == "<lambda>":
            raise NotExportable(f"{value!r} has no importable name")
        module = _public_module(value)
        imports.add((module, name))
        return f"np.{name}" if module == "numpy" else name
    plain = _plain(value)
    if isinstance(plain, float) and not math.isfinite(plain):
        return f"float({str(plain)!r})"
    if plain is None or isinstance(plain, (bool, int, float, str)):
        return repr(plain)
    raise NotExportable(f"a parameter of type {type(value).__name__} has no Python spelling here")


def _changed_params(estimator: BaseEstimator) -> dict[str, Any]:
    """The constructor parameters that differ from the class's defaults, in signature order."""
    defaults = _init_defaults(type(estimator))
    changed = {}
    for key, value in estimator.get_params(deep=False).items():
        default = defaults.get(key, _MISSING)
        if default is _MISSING or not _same(value, default):
            changed[key] = value
    return changed


def _init_defaults(cls: type) -> dict[str, Any]:
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in signature.parameters.items()
            if name != "self" and p.default is not inspect.Parameter.empty}


def _is_plain_object(value: Any) -> bool:
    """An object like a CV splitter: built from keyword arguments it keeps as attributes."""
    cls = type(value)
    if cls.__module__ in ("builtins",) or inspect.isfunction(value) or inspect.isclass(value):
        return False
    if isinstance(value, (np.ndarray, np.generic)):
        return False
    defaults = _init_defaults(cls)
    try:
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    except (TypeError, ValueError):
        return False
    return bool(names) and all(hasattr(value, n) for n in names) and set(names) >= set(defaults)


def _init_params(value: Any) -> dict[str, Any]:
    defaults = _init_defaults(type(value))
    return {n: getattr(value, n) for n in inspect.signature(type(value).__init__).parameters
            if n != "self" and not _same(getattr(value, n), defaults.get(n, _MISSING))}


def _same(a: Any, b: Any) -> bool:
    if b is _MISSING:
        return False
    try:
        a, b = _plain(a), _plain(b)
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - arrays and the like: not provably the default
        return False


def _plain(value: Any) -> Any:
    """numpy scalars as Python values; estimators and others as their class name (for JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    name = getattr(value, "__name__", None)
    return name if name else " ".join(repr(value).split())


def _public_module(obj: Any) -> str:
    """The shortest module without a private part that exports ``obj`` under its name."""
    module = getattr(obj, "__module__", None) or ""
    name = obj.__name__
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        candidate = ".".join(parts[:end])
        if any(part.startswith("_") for part in parts[:end]):
            break
        try:
            if getattr(importlib.import_module(candidate), name, None) is obj:
                return candidate
        except ImportError:
            continue
    return module
