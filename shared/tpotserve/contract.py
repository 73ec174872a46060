"""A model's contract: what its endpoint takes and answers, and how two of them differ.

The contract of a version is read from its meta.json: the feature names and kinds (in the
model's order: V2 tensors are read in it), the target, the task and, for a classifier, the
class labels (the keys of ``probabilities`` in every answer). A retrain or an activation
that would change the contract a model serves is refused unless the request says
``"replace_contract": true`` (:func:`guard`); the API checks before enqueueing, the trainer
and the control worker check again (the queue is a trust boundary, and the current version
may have changed meanwhile).

Added classes are not a change of contract: every answer keeps its keys and gains one.
Removed classes are (the answer's keys shrink), as is anything about the features, the
target or the task.

Pure: no Flask, RQ, TPOT or pandas; the callers build a :class:`Contract` from what they hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ContractConflict

__all__ = ["Contract", "ContractChange", "ContractConflict", "contract_of", "diff", "guard", "history"]

OVERRIDE_FIELD = "replace_contract"
SHOWN_NAMES = 5
"""How many feature or class names a one-line message lists before "and N more"."""


@dataclass(frozen=True)
class Contract:
    """What an endpoint takes and answers."""

    features: tuple[tuple[str, str], ...]
    """(name, kind) of every feature, in the model's order."""
    target: str | None
    task: str
    classes: tuple[str, ...] | None = None
    """A classifier's labels as the answer's keys (strings), in the model's order; None for a regressor."""

    @classmethod
    def build(
        cls, features: Iterable[tuple[str, str]], target: str | None, task: str, classes: Iterable[Any] | None
    ) -> Contract:
        labels = tuple(str(c) for c in classes) if classes is not None and task == "classification" else None
        return cls(tuple((str(n), str(k)) for n, k in features), target, task, labels)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Contract:
        """The contract of a version's metadata (a parsed meta.json)."""
        features = [
            (str(f.get("name")), str(f.get("type") or "number"))
            for f in meta.get("features") or []
            if isinstance(f, Mapping)
        ]
        return cls.build(features, meta.get("target"), str(meta.get("task")), meta.get("classes"))

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.features]

    def to_json(self) -> dict[str, Any]:
        return {
            "features": [{"name": name, "type": kind} for name, kind in self.features],
            "target": self.target,
            "task": self.task,
            "classes": list(self.classes) if self.classes is not None else None,
        }

    def summary(self) -> str:
        """One line: "classification of species from 4 features (SepalLength, ...); classes a, b"."""
        text = f"{self.task} of {self.target} from {len(self.features)} features ({_names(self.feature_names)})"
        if self.classes is not None:
            text += f"; classes {_names(self.classes)}"
        return text


@dataclass(frozen=True)
class ContractChange:
    """How a new contract differs from the served one."""

    features_added: tuple[str, ...] = ()
    features_missing: tuple[str, ...] = ()
    features_retyped: tuple[tuple[str, str, str], ...] = ()
    """(name, old kind, new kind)."""
    features_reordered: bool = False
    """The same names in another order (V2 tensors are read in feature order)."""
    target: tuple[str | None, str | None] | None = None
    task: tuple[str, str] | None = None
    classes_added: tuple[str, ...] = ()
    classes_removed: tuple[str, ...] = ()

    @property
    def breaking(self) -> bool:
        """True when answers (or accepted requests) would change shape: anything but added classes."""
        return self.reshaped or bool(self.classes_removed)

    @property
    def reshaped(self) -> bool:
        """The features, the target or the task change: another model, whatever its classes."""
        return bool(
            self.features_added or self.features_missing or self.features_retyped or self.features_reordered
            or self.target or self.task
        )

    @property
    def empty(self) -> bool:
        return not self.breaking and not self.classes_added

    def to_json(self) -> dict[str, Any]:
        return {
            "features_added": list(self.features_added),
            "features_missing": list(self.features_missing),
            "features_retyped": [{"name": n, "from": a, "to": b} for n, a, b in self.features_retyped],
            "features_reordered": self.features_reordered,
            "target": {"from": self.target[0], "to": self.target[1]} if self.target else None,
            "task": {"from": self.task[0], "to": self.task[1]} if self.task else None,
            "classes_added": list(self.classes_added),
            "classes_removed": list(self.classes_removed),
        }

    def message(self) -> str:
        """The difference in one line, for a person: "features added: a, b; target x -> y"."""
        parts = []
        if self.features_added:
            parts.append(f"features added: {_names(self.features_added)}")
        if self.features_missing:
            parts.append(f"features missing: {_names(self.features_missing)}")
        if self.features_retyped:
            parts.append("features retyped: " + ", ".join(f"{n} {a} -> {b}" for n, a, b in self.features_retyped))
        if self.features_reordered:
            parts.append("features reordered")
        if self.target:
            parts.append(f"target {self.target[0]} -> {self.target[1]}")
        if self.task:
            parts.append(f"task {self.task[0]} -> {self.task[1]}")
        if self.classes_removed:
            parts.append(f"classes removed: {_names(self.classes_removed)}")
        if self.classes_added:
            parts.append(f"classes added: {_names(self.classes_added)}")
        return "; ".join(parts) or "no change"


def diff(old: Contract, new: Contract) -> ContractChange:
    """What changes when ``new`` replaces ``old``."""
    old_kinds, new_kinds = dict(old.features), dict(new.features)
    added = tuple(n for n in new.feature_names if n not in old_kinds)
    missing = tuple(n for n in old.feature_names if n not in new_kinds)
    retyped = tuple((n, old_kinds[n], k) for n, k in new.features if n in old_kinds and old_kinds[n] != k)
    reordered = not added and not missing and old.feature_names != new.feature_names
    classes_added: tuple[str, ...] = ()
    classes_removed: tuple[str, ...] = ()
    if old.task == new.task == "classification" and old.target == new.target:  # else: another question
        old_classes, new_classes = old.classes or (), new.classes or ()
        classes_added = tuple(c for c in new_classes if c not in old_classes)
        classes_removed = tuple(c for c in old_classes if c not in new_classes)
    return ContractChange(
        features_added=added,
        features_missing=missing,
        features_retyped=retyped,
        features_reordered=reordered,
        target=(old.target, new.target) if old.target != new.target else None,
        task=(old.task, new.task) if old.task != new.task else None,
        classes_added=classes_added,
        classes_removed=classes_removed,
    )


def contract_of(meta: Mapping[str, Any] | None) -> Contract | None:
    """The contract of a version's metadata; None for none (or metadata that names no task)."""
    if not meta or meta.get("task") not in ("classification", "regression"):
        return None
    return Contract.from_meta(meta)


def guard(
    served: Mapping[str, Any] | None,
    new: Contract,
    *,
    model: str,
    action: str,
    replace: bool,
) -> ContractChange | None:
    """Refuse (:class:`ContractConflict`) ``action`` when ``new`` would change the contract
    of ``served`` (the current version's metadata; None: nothing served, anything goes),
    unless ``replace``. Returns the change (None when nothing is served), breaking or not.

    ``action``: how the message names what was asked, e.g. "this training" or
    "activating 20261127T123713Z-76617c".
    """
    current = contract_of(served)
    if current is None:
        return None
    change = diff(current, new)
    if change.breaking and not replace:
        version = served.get("version") if served else None
        raise ContractConflict(
            f"{action} would change the contract of model {model!r} (served: version {version}): "
            f"{change.message()}. Train a new model instead (\"model\": \"<new name>\"), or send "
            f"\"{OVERRIDE_FIELD}\": true (admin) to replace its contract deliberately",
            field=None,
            contract_change=change.to_json(),
            current_version=version,
            current_contract=current.to_json(),
            new_contract=new.to_json(),
            override=OVERRIDE_FIELD,
        )
    return change


@dataclass(frozen=True)
class History:
    """Whether a model's stored versions serve one contract or several."""

    contract: Contract | None
    """The current version's (else the newest version's) contract."""
    other_versions: list[str] = field(default_factory=list)
    """Versions with other features, target or task, oldest first. (Versions that differ only
    in their classes are one model's history: a class added later is allowed.)"""

    @property
    def mixed(self) -> bool:
        return bool(self.other_versions)

    def to_json(self) -> dict[str, Any]:
        return {
            "contract": self.contract.to_json() if self.contract else None,
            "mixed_contracts": self.mixed,
            "other_contract_versions": list(self.other_versions),
        }


def history(metas: Iterable[Mapping[str, Any]], current: str | None) -> History:
    """The contract of a model's current version and the stored versions that differ from it
    (``metas``: every stored version's metadata, oldest first)."""
    metas = list(metas)
    reference = next((m for m in metas if m.get("version") == current), metas[-1] if metas else None)
    base = contract_of(reference)
    if base is None:
        return History(None)
    others = []
    for meta in metas:
        contract = contract_of(meta)
        if contract is None or diff(base, contract).reshaped:
            others.append(str(meta.get("version")))
    return History(base, others)


def _names(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")
