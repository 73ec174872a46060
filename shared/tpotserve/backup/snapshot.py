"""Copying each model's store and each data set into an archive, consistent while the stack runs.

Why a backup of a running stack is consistent: versions and data sets are
immutable once renamed into place, and temp directories (dot-prefixed) are
never read. Models are copied one after another, and for each the pointer is
read first (its side files at once after it, and again whenever it is) and
its version (and ``previous``) copied first; a version that retention deletes
while the backup runs is left out with a note, except the pointer's, for which
the pointer is read again (bounded). A model whose store
moves while it is copied (the trainer moving a single-model volume under
``models/<default>/`` at its start) is copied again from its new place
(bounded; versions already copied are kept, they are immutable). Every
artifact is hashed as it streams into the archive and must match its
metadata, so a corrupt or half-read file fails the backup instead of producing
a bad archive.

The models are :meth:`tpotserve.registry.ModelRegistry.names`, each read through
:meth:`~tpotserve.registry.ModelRegistry.store`: a volume still in the
single-model layout (``<model dir>/versions``, ``<model dir>/current.json``) is
backed up as the default model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..atomic import FILE_MODE
from ..names import DATASET_DATA_NAME, DATASET_META_NAME
from ..registry import MIGRATING_PREFIX, ModelRegistry
from ..store import ARTIFACT_NAME, META_NAME, POINTER_NAME, SIDECAR_NAME, ModelStore
from .common import BackupError, plain_entries
from .format import SIDE_FILES, SMALL_MEMBER_MAX_BYTES, model_prefix, sidecar_documents, version_documents

# How often the pointer is read again when its version vanished during a backup
# (retention deleted it after a newer version was published and activated).
POINTER_ATTEMPTS = 3
# How often a model is copied again when its store moved while it was copied, and the pause
# (times the attempt) before the next copy: the trainer's move is a few renames.
MOVE_ATTEMPTS = 3
MOVE_PAUSE_S = 0.2


def _open_for_copy(path: Path) -> IO[bytes]:
    """Open a file of the store for copying (one place, so tests can interfere with a copy)."""
    return open(path, "rb")


class _Hashing:
    """A read-only file wrapper that hashes what tarfile copies out of it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.sha.update(data)
        self.bytes += len(data)
        return data


@dataclass
class ArchiveWriter:
    tar: tarfile.TarFile
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _info(self, name: str, size: int, mode: int, mtime: float | None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = mode
        info.mtime = int(mtime if mtime is not None else time.time())
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_bytes(self, name: str, data: bytes, mode: int = FILE_MODE, mtime: float | None = None) -> None:
        self.tar.addfile(self._info(name, len(data), mode, mtime), io.BytesIO(data))
        self.files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def add_verified(self, name: str, handle: IO[bytes], expected_sha256: str, what: str) -> dict[str, Any]:
        """Stream an open file into the archive; BackupError unless its bytes hash to ``expected_sha256``."""
        stat = os.fstat(handle.fileno())
        source = _Hashing(handle)
        try:
            self.tar.addfile(self._info(name, stat.st_size, FILE_MODE, stat.st_mtime), source)
        except OSError as exc:  # tarfile: "unexpected end of data" when the file shrank
            raise BackupError(f"{what}: reading {name} failed: {exc}") from exc
        digest = source.sha.hexdigest()
        if digest != expected_sha256:
            raise BackupError(
                f"{what}: {name} has sha256 {digest[:12]}..., "
                f"its metadata says {str(expected_sha256)[:12]}...: "
                "the file is corrupt or was changed after it was written; no backup was made"
            )
        entry = {"sha256": digest, "bytes": source.bytes}
        self.files[name] = entry
        return entry


def _read_pointer(store: ModelStore) -> tuple[bytes | None, dict[str, Any] | None]:
    """current.json's bytes and content, or (None, None) when no model was ever published."""
    try:
        raw = store.pointer_path.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        data = json.loads(raw)
        version, sha = str(data["version"]), str(data["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{store.pointer_path} is unreadable: {exc}") from exc
    previous = data.get("previous")
    return raw, {"version": version, "sha256": sha, "previous": str(previous) if previous else None}


def _read_side_files(store: ModelStore) -> tuple[dict[str, bytes], list[str]]:
    """The model's side files as they are now ({name: bytes}; an absent one is left out), and
    the names of those too large for a restore to take (SMALL_MEMBER_MAX_BYTES), left out too."""
    found: dict[str, bytes] = {}
    too_large: list[str] = []
    for name in SIDE_FILES:
        try:
            with open(store.root / name, "rb") as handle:
                raw = handle.read(SMALL_MEMBER_MAX_BYTES + 1)
        except FileNotFoundError:
            continue
        if len(raw) > SMALL_MEMBER_MAX_BYTES:
            too_large.append(name)
        else:
            found[name] = raw
    return found, too_large


def _copy_entry(
    writer: ArchiveWriter, directory: Path, prefix: str, data_name: str, meta_name: str, what: str,
    documents: bool = False,
) -> tuple[dict[str, Any] | None, str]:
    """Copy a version or a data set (a data file and its meta.json with the data's sha256) into
    the archive under ``prefix``: (sha256 and size, "") or (None, why it was left out).
    ``documents``: also the files meta.json lists under ``files`` (a version's card and
    leaderboard), each checked against its sha256 there."""
    try:
        with _open_for_copy(directory / meta_name) as handle:
            meta_raw = handle.read()
            meta_mtime = os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        return None, (f"has no {meta_name} (incomplete)" if directory.is_dir() else "vanished")
    try:
        meta = json.loads(meta_raw)
        expected = meta["sha256"]
        if not isinstance(expected, str):
            raise TypeError("sha256 is not a string")
        listed = version_documents(meta) if documents else {}
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{what}: {meta_name} is unreadable: {exc}") from exc
    try:
        handle = _open_for_copy(directory / data_name)
    except FileNotFoundError:
        return None, (f"has no {data_name} (incomplete)" if directory.is_dir() else "vanished")
    # Once open, the file is read whole even if retention deletes the version meanwhile.
    with handle:
        entry = writer.add_verified(f"{prefix}/{data_name}", handle, expected, what)
    for name, sha in listed.items():
        try:
            document = _open_for_copy(directory / name)
        except FileNotFoundError:
            if not directory.is_dir():
                return None, "vanished"
            raise BackupError(f"{what}: {name}, which its {meta_name} lists, is missing") from None
        with document:
            writer.add_verified(f"{prefix}/{name}", document, sha, what)
    if documents and not _copy_sidecar(writer, directory, prefix, meta, what):
        return None, "vanished"
    writer.add_bytes(f"{prefix}/{meta_name}", meta_raw, mtime=meta_mtime)
    return {"sha256": expected, "bytes": entry["bytes"]}, ""



def _copy_sidecar(writer: ArchiveWriter, directory: Path, prefix: str, meta: dict[str, Any], what: str) -> bool:
    """A compiled form added to the version after publishing (``tpotserve compile``): its
    compiled.json and the model.onnx it covers, checked against its sha256. add_compiled renames
    compiled.json last, so once it is there model.onnx is too. False: the version vanished."""
    try:
        with _open_for_copy(directory / SIDECAR_NAME) as handle:
            raw = handle.read()
    except FileNotFoundError:
        return directory.is_dir()
    try:
        covered = sidecar_documents(meta, raw)
    except ValueError as exc:
        raise BackupError(f"{what}: {SIDECAR_NAME} is unusable: {exc}") from exc
    for name, sha in covered.items():
        try:
            document = _open_for_copy(directory / name)
        except FileNotFoundError:
            if not directory.is_dir():
                return False
            raise BackupError(f"{what}: {name}, which its {SIDECAR_NAME} covers, is missing") from None
        with document:
            writer.add_verified(f"{prefix}/{name}", document, sha, what)
    writer.add_bytes(f"{prefix}/{SIDECAR_NAME}", raw)
    return True


def copy_dataset(writer: ArchiveWriter, root: Path, dataset_id: str) -> tuple[dict[str, Any] | None, str]:
    entry, why = _copy_entry(
        writer, root / dataset_id, f"datasets/{dataset_id}", DATASET_DATA_NAME, DATASET_META_NAME,
        f"data set {dataset_id!r}",
    )
    return ({"id": dataset_id, **entry} if entry else None), why



@dataclass
class ModelCopy:
    """What the archive holds of one model."""

    name: str
    pointer_raw: bytes | None = None
    pointer: dict[str, Any] | None = None
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    side: dict[str, bytes] = field(default_factory=dict)
    """The side files as read right after the pointer."""
    too_large: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def read_pointer(self, store: ModelStore) -> None:
        """The pointer, then at once the side files: the state they describe is the pointer's,
        give or take a change in between (the activation log may then hold one line more or
        less than the pointer explains; none of them decides what is served)."""
        self.pointer_raw, self.pointer = _read_pointer(store)
        self.side, self.too_large = _read_side_files(store)

    def copy_version(self, writer: ArchiveWriter, store: ModelStore, version: str) -> str:
        """Copy a version unless it is held already: "" or why it was left out."""
        if version in self.versions:
            return ""
        entry, why = _copy_entry(
            writer, store.versions_dir / version, f"{model_prefix(self.name)}/versions/{version}",
            ARTIFACT_NAME, META_NAME, f"model {self.name!r} version {version!r}", documents=True,
        )
        if entry is not None:
            self.versions[version] = {"version": version, **entry}
        return why

    def copy_store(self, writer: ArchiveWriter, store: ModelStore) -> None:
        """One pass over ``store``: the pointer first, its versions at once (the window in which
        they could go is tiny), then every other complete version."""
        self.notes = []
        self.read_pointer(store)
        for attempt in range(1, POINTER_ATTEMPTS + 1):
            if self.pointer is None:
                break
            wanted = [v for v in (self.pointer["version"], self.pointer["previous"]) if v]
            for version in wanted:
                self.copy_version(writer, store, version)
            if all(version in self.versions for version in wanted):
                break
            if attempt < POINTER_ATTEMPTS:
                # Retention deleted one: the pointer moved on since we read it. Follow it.
                self.read_pointer(store)
        # One that retention deletes meanwhile is left out.
        for version in plain_entries(store.versions_dir):
            why = self.copy_version(writer, store, version)
            if why:
                reason = "deleted by retention while the backup ran" if why == "vanished" else why
                self.notes.append(f"model {self.name!r} version {version!r} left out: {reason}")
        for name in self.too_large:  # a restore would refuse the archive: leave it out, say so
            self.notes.append(
                f"model {self.name!r} {name} left out: larger than {SMALL_MEMBER_MAX_BYTES} bytes"
            )

    def check_pointer(self) -> None:
        """BackupError unless the pointer names a version the archive holds, with its sha256."""
        pointer = self.pointer
        if pointer is None:
            return
        held = self.versions.get(pointer["version"])
        if held is None:
            raise BackupError(
                f"model {self.name!r}: the current version {pointer['version']!r} named by {POINTER_NAME} "
                f"is not in the store (read {POINTER_ATTEMPTS} times); no backup was made"
            )
        if held["sha256"] != pointer["sha256"]:
            raise BackupError(
                f"model {self.name!r}: {POINTER_NAME} names version {pointer['version']!r} "
                f"with sha256 {pointer['sha256'][:12]}..., "
                f"but that version's metadata says {held['sha256'][:12]}...; no backup was made"
            )
        if pointer["previous"] and pointer["previous"] not in self.versions:
            self.notes.append(
                f"model {self.name!r}: the previous version {pointer['previous']!r} "
                f"named by {POINTER_NAME} is not in the store"
            )


def _moving(registry: ModelRegistry, name: str, read: ModelStore) -> bool:
    """Whether model ``name``'s store moved (or is moving) away from the one just read: the
    trainer's :meth:`~tpotserve.registry.ModelRegistry.migrate_legacy` of a single-model volume."""
    staging = registry.models_dir / f"{MIGRATING_PREFIX}{name}"
    return registry.store(name).root != read.root or staging.exists()


def copy_model(writer: ArchiveWriter, registry: ModelRegistry, name: str) -> ModelCopy:
    copied = ModelCopy(name)
    for attempt in range(1, MOVE_ATTEMPTS + 1):
        store = registry.store(name)
        copied.copy_store(writer, store)
        if not _moving(registry, name, store):
            copied.check_pointer()
            return copied
        if attempt < MOVE_ATTEMPTS:
            time.sleep(MOVE_PAUSE_S * attempt)
    raise BackupError(
        f"model {name!r} was being moved under {registry.models_dir / name} while the backup ran "
        f"(a trainer starting on a single-model volume; if none is, one that died while moving it left "
        f"{registry.models_dir / (MIGRATING_PREFIX + name)}: starting the trainer finishes the move). "
        "Run the backup again; no backup was made"
    )
