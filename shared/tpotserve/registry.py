"""Named models on the model volume: one :class:`~tpotserve.store.ModelStore` per name.

    <root>/models/<name>/versions/<version>/{model.joblib,meta.json}
    <root>/models/<name>/current.json
    <root>/models/<name>/.publish.lock

Each name is a store of its own: its own versions, pointer, publish lock, gate and
retention, so publishing, activating or breaking one model never touches another.
The default model (``MODEL_NAME``, ``iris``) is what the book's ``POST /predict`` and
every unnamed endpoint serve.

Before named models, the volume held one store at its root (``<root>/versions``,
``<root>/current.json``). :meth:`ModelRegistry.migrate_legacy` (the trainer runs it
at start) moves that store under the default name without losing a version, and
until it has, :meth:`ModelRegistry.store` reads the default model from the old
place, so an API upgraded first keeps serving.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import fsync_dir
from .errors import NotFound
from .names import MODEL_NAME_PATTERN, check_model_name, is_model_name
from .settings import signing_key
from .store import ACTIVATIONS_NAME, POINTER_NAME, POLICY_NAME, SHADOW_NAME, ModelStore

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["MODEL_NAME_PATTERN", "ModelRegistry", "check_model_name"]

log = logging.getLogger(__name__)

MODELS_DIR = "models"
MIGRATING_PREFIX = ".migrating-"


class ModelRegistry:
    """Finds (and in the trainer, creates) the store of each model name under ``root``."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry a service uses: MODEL_DIR, the signing key (or the insecure
        development mode; RuntimeError without either), MODEL_NAME."""
        return cls(settings.model_dir, signing_key(settings), settings.model_name)

    def __init__(self, root: Path, signing_key: bytes | None, default_name: str) -> None:
        self.root = Path(root)
        self.signing_key = signing_key
        self.default_name = check_model_name(default_name, field="MODEL_NAME")
        self.models_dir = self.root / MODELS_DIR

    def store(self, name: str | None = None) -> ModelStore:
        """The store of model ``name`` (the default model when None), existing or not."""
        name = self.default_name if name is None else check_model_name(name)
        path = self.models_dir / name
        if name == self.default_name and not path.is_dir() and self._legacy_present():
            return ModelStore(self.root, self.signing_key)  # not migrated yet
        return ModelStore(path, self.signing_key)

    def existing_store(self, name: str | None = None) -> ModelStore:
        """The store of a model that exists (has any version or a pointer); NotFound otherwise."""
        store = self.store(name)
        if not _holds_a_store(store.root):
            shown = self.default_name if name is None else name
            raise NotFound(f"no model named {shown!r}; GET /registry lists them", field="model")
        return store

    def names(self) -> list[str]:
        """Every model name on the volume, the default first (when it exists), then by name."""
        found = set()
        if self.models_dir.is_dir():
            for entry in self.models_dir.iterdir():
                if is_model_name(entry.name) and _holds_a_store(entry):
                    found.add(entry.name)
        if self._legacy_present():
            found.add(self.default_name)
        rest = sorted(found - {self.default_name})
        return [self.default_name, *rest] if self.default_name in found else rest

    def _legacy_present(self) -> bool:
        return (self.root / POINTER_NAME).exists() or (self.root / "versions").is_dir()

    # --- the trainer only -------------------------------------------------------------
    def migrate_legacy(self) -> list[str]:
        """Move a single-model volume's store under the default name; returns what moved.

        Order is what keeps readers serving: the pointer leaves the old place first (an
        API polling it sees "no pointer" and keeps the model it has), then the versions,
        into a dot-named staging directory that one rename makes the default model's
        directory, complete. A crash anywhere is resumed by the next call. Versions are
        immutable and uniquely named, so one already under the default name is never
        overwritten.
        """
        if not self._legacy_present() and not self._staging_dirs():
            return []
        legacy = ModelStore(self.root, self.signing_key)
        moved: list[str] = []
        with legacy.publishing():  # against a trainer or activate still on the old layout
            target = self.models_dir / self.default_name
            self.models_dir.mkdir(parents=True, exist_ok=True)
            staging = self.models_dir / f"{MIGRATING_PREFIX}{self.default_name}"
            into = target if target.is_dir() else staging
            into.mkdir(exist_ok=True)
            moved += self._move_pointer(into)
            moved += self._move_side_documents(into)
            moved += self._move_versions(into)
            fsync_dir(into)
            if into is staging:
                staging.rename(target)
            fsync_dir(self.models_dir)
            fsync_dir(self.root)
        if moved:
            log.info("moved the single-model store under the name %r: %s", self.default_name, ", ".join(moved))
        return moved

    def _move_pointer(self, into: Path) -> list[str]:
        old_pointer = self.root / POINTER_NAME
        if not old_pointer.exists():
            return []
        if (into / POINTER_NAME).exists():
            # The default model already has a pointer (migrated before, then the old
            # place was written again): it wins; the old one is kept beside, not lost.
            os.replace(old_pointer, into / f"{POINTER_NAME}.legacy")
            log.warning("kept the newer pointer of %s; the old one is %s.legacy",
                        self.default_name, POINTER_NAME)
        else:
            os.replace(old_pointer, into / POINTER_NAME)
        return [POINTER_NAME]

    def _move_side_documents(self, into: Path) -> list[str]:
        """The model's documents beside its pointer move with it. Where the default name
        already has one (written since), the old activation lines are appended to its
        log, and an old policy or shadow is kept beside as .legacy, like the pointer."""
        moved = []
        for side in (ACTIVATIONS_NAME, POLICY_NAME, SHADOW_NAME):
            old_side = self.root / side
            if not old_side.exists():
                continue
            if not (into / side).exists():
                os.replace(old_side, into / side)
            elif side == ACTIVATIONS_NAME:
                with open(into / side, "ab") as log_file:
                    log_file.write(old_side.read_bytes())
                    os.fsync(log_file.fileno())
                old_side.unlink()
            else:
                os.replace(old_side, into / f"{side}.legacy")
            moved.append(side)
        return moved

    def _move_versions(self, into: Path) -> list[str]:
        old_versions = self.root / "versions"
        if not old_versions.is_dir():
            return []
        if not (into / "versions").exists():
            old_versions.rename(into / "versions")
            return sorted(p.name for p in (into / "versions").iterdir())
        moved = []
        for entry in sorted(old_versions.iterdir()):
            dest = into / "versions" / entry.name
            if dest.exists():
                continue  # the same immutable version, moved before a crash
            entry.rename(dest)
            moved.append(entry.name)
        _remove_if_empty_of_versions(old_versions)
        return moved

    def _staging_dirs(self) -> list[Path]:
        if not self.models_dir.is_dir():
            return []
        return [p for p in self.models_dir.iterdir() if p.name.startswith(MIGRATING_PREFIX)]


def _holds_a_store(path: Path) -> bool:
    return (path / "versions").is_dir() or (path / POINTER_NAME).exists()


def _remove_if_empty_of_versions(directory: Path) -> None:
    """Delete the old versions/ once only temp leftovers remain (a dead writer's)."""
    if all(entry.name.startswith(".") for entry in directory.iterdir()):
        shutil.rmtree(directory, ignore_errors=True)
