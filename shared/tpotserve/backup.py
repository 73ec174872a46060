"""Backups of every named model and the uploaded data sets, consistent while the stack runs.

    python -m tpotserve.backup create ARCHIVE|-            # - writes the archive to stdout
    python -m tpotserve.backup restore ARCHIVE|- [--force] [--only models|datasets]

Both read MODEL_DIR, DATASET_DIR and MODEL_NAME (the default model) from
:mod:`tpotserve.settings` unless ``--model-dir``/``--dataset-dir`` (or
``--data-dir DIR``: the native run's layout ``DIR/models``, ``DIR/datasets``,
``DIR/signing.key``) say otherwise.

The archive (format version 3) is a gzip tar:

    models/models/<name>/versions/<version>/model.joblib   every complete version of every model,
    models/models/<name>/versions/<version>/meta.json      byte for byte
    models/models/<name>/versions/<version>/<document>     leaderboard.json, card.json, card.md: those
                                                           its meta.json lists under "files"
    datasets/<id>/data.csv, datasets/<id>/meta.json
    signing.key                         only with --signing-key-file, when the file exists
    models/models/<name>/activations.jsonl, policy.json, shadow.json
                                        each model's side files (those it has), byte for byte,
                                        as read right after its pointer
    models/models/<name>/current.json   each model's pointer, as read when its copy started
    manifest.json                       last: format, created_at, default_model, per model its
                                        pointer and its versions' sha256, every data set's sha256,
                                        every file's sha256

The models are :meth:`tpotserve.registry.ModelRegistry.names`, each read through
:meth:`~tpotserve.registry.ModelRegistry.store`: a volume still in the
single-model layout (``<model dir>/versions``, ``<model dir>/current.json``) is
backed up as the default model. A format 1 archive (before named models:
``models/versions/<version>/...``, ``models/current.json``, one ``pointer`` and
one ``versions`` list in the manifest) is restored as the default model, into
``<model dir>/models/<default>/``. A format 2 archive (before the side files)
restores as it always did: it creates no side file.

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
a bad archive. A backup file is written under a temp name beside the target
(mode 0600: it may hold the signing key) and renamed when complete.

A restore refuses when any model the archive holds already has a store on the
volume (unless ``--force``; a side file counts too): checked at the first
member of each model, before its files are read, and again before the first
rename. It accepts only the member names above (or format 1's; side files only
in format 3) as regular files (checked with tarfile's ``data`` filter too),
with model names that :func:`tpotserve.registry.check_model_name` accepts;
verifies every file against the manifest and every artifact against its
metadata; stages versions and data sets in a dot-prefixed directory on the
target filesystem, renames them into place, then replaces every model's side
files (each atomically, byte for byte; one the archive lacks is left as it is),
and writes each model's ``current.json`` last, atomically, after every model's
versions and side files. An interrupted or rejected restore therefore
never leaves a pointer naming a missing version, and restoring under a running
API is safe: its workers follow a pointer when it appears.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .atomic import DIR_MODE, FILE_MODE, TMP_PREFIX, fsync_dir, replace_file, sha256_file
from .clock import utc_iso
from .errors import InvalidInput
from .registry import MIGRATING_PREFIX, MODELS_DIR, ModelRegistry, check_model_name
from .store import (
    ACTIVATIONS_NAME,
    ARTIFACT_NAME,
    DOCUMENTS,
    META_NAME,
    POINTER_NAME,
    POLICY_NAME,
    SHADOW_NAME,
    ModelStore,
)

__all__ = ["BackupError", "RestoreError", "create", "create_file", "main", "restore", "restore_file"]

FORMAT = "tpotserve-backup"
# 3: each model's side files (SIDE_FILES) beside its pointer. Bumped although a reader of 3
# reads 2 unchanged (a format 2 archive is one without them): a format 2 reader does not
# ignore member names it does not know, it refuses the archive (_check_member), so these
# archives are not format 2 to it. It refuses them at the first side file, before it reaches
# the manifest (last) and its number, with or without the bump; the number is for the
# manifest's readers: which tpotserve can restore this archive.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
"""1: one store at the archive's ``models/`` (before named models), restored as the default model.
2: named models, without their side files."""
SIDE_FILES_SINCE = 3
SIDE_FILES = (ACTIVATIONS_NAME, POLICY_NAME, SHADOW_NAME)
"""Each model's files beside current.json (tpotserve.store): its activation log, its retraining
policy, its version in shadow. Any of them may be absent."""
MANIFEST_NAME = "manifest.json"
KEY_MEMBER = "signing.key"
# The data set store's file names (tpotserve.datasets; not imported: it pulls in pandas).
DATASET_DATA_NAME = "data.csv"
DATASET_META_NAME = "meta.json"
# How often the pointer is read again when its version vanished during a backup
# (retention deleted it after a newer version was published and activated).
POINTER_ATTEMPTS = 3
# How often a model is copied again when its store moved while it was copied, and the pause
# (times the attempt) before the next copy: the trainer's move is a few renames.
MOVE_ATTEMPTS = 3
MOVE_PAUSE_S = 0.2
# Members read into memory (manifest, pointer, metadata, key) may not be larger.
SMALL_MEMBER_MAX_BYTES = 16 * 1024 * 1024
RESTORE_STAGING_PREFIX = ".restore-"
LEGACY_STAGE = "-format-1"  # a format 1 archive's store while staged: no model name starts with "-"
KEY_MODE = 0o600
_CHUNK = 1 << 20

_NAME = r"(?!\.)[^/\x00]{1,100}"  # a version, data set id or model name: a plain name (checked further)
_MEMBER = re.compile(
    rf"(?P<manifest>{re.escape(MANIFEST_NAME)})"
    rf"|(?P<key>{re.escape(KEY_MEMBER)})"
    # A model's store: models/models/<name>/... (format 2) or models/... (format 1, no name).
    rf"|models/(?:{MODELS_DIR}/(?P<model>{_NAME})/)?"
    rf"(?:(?P<pointer>{re.escape(POINTER_NAME)})"
    rf"|(?P<side>{'|'.join(map(re.escape, SIDE_FILES))})"  # format 3 only: checked with the manifest
    rf"|versions/(?P<version>{_NAME})/(?P<vfile>{'|'.join(map(re.escape, (ARTIFACT_NAME, META_NAME, *DOCUMENTS)))}))"
    rf"|datasets/(?P<dataset>{_NAME})/"
    rf"(?P<dfile>{re.escape(DATASET_DATA_NAME)}|{re.escape(DATASET_META_NAME)})"
)


def _model_prefix(name: str | None) -> str:
    """Where a model's store is in an archive: ``models/models/<name>``; None: format 1's ``models``."""
    return "models" if name is None else f"models/{MODELS_DIR}/{name}"


class BackupError(Exception):
    """A backup could not be made; nothing was written under the archive's name."""


class RestoreError(Exception):
    """A restore was refused or failed; no pointer was written."""


Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("tpotserve")
    except Exception:  # noqa: BLE001 - only informative
        return "unknown"


def _open_for_copy(path: Path) -> IO[bytes]:
    """Open a file of the store for copying (one place, so tests can interfere with a copy)."""
    return open(path, "rb")


# --- create -------------------------------------------------------------------
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
class _ArchiveWriter:
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
    writer: _ArchiveWriter, directory: Path, prefix: str, data_name: str, meta_name: str, what: str,
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
        listed = _documents(meta) if documents else {}
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
    writer.add_bytes(f"{prefix}/{meta_name}", meta_raw, mtime=meta_mtime)
    return {"sha256": expected, "bytes": entry["bytes"]}, ""


def _documents(meta: dict[str, Any]) -> dict[str, str]:
    """{name: sha256} of the documents a version's meta.json lists; TypeError when malformed."""
    files = meta.get("files") or {}
    if not isinstance(files, dict) or not all(
        name in DOCUMENTS and isinstance(sha, str) for name, sha in files.items()
    ):
        raise TypeError(f"files must map {', '.join(DOCUMENTS)} to sha256 strings")
    return files


def _copy_dataset(writer: _ArchiveWriter, root: Path, dataset_id: str) -> tuple[dict[str, Any] | None, str]:
    entry, why = _copy_entry(
        writer, root / dataset_id, f"datasets/{dataset_id}", DATASET_DATA_NAME, DATASET_META_NAME,
        f"data set {dataset_id!r}",
    )
    return ({"id": dataset_id, **entry} if entry else None), why


def _plain_entries(directory: Path) -> list[str]:
    """Names of the complete entries of a store directory: never dot-prefixed temp directories."""
    if not directory.is_dir():
        return []
    return sorted(e.name for e in directory.iterdir() if not e.name.startswith(".") and e.is_dir())


@dataclass
class _ModelCopy:
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

    def copy_version(self, writer: _ArchiveWriter, store: ModelStore, version: str) -> str:
        """Copy a version unless it is held already: "" or why it was left out."""
        if version in self.versions:
            return ""
        entry, why = _copy_entry(
            writer, store.versions_dir / version, f"{_model_prefix(self.name)}/versions/{version}",
            ARTIFACT_NAME, META_NAME, f"model {self.name!r} version {version!r}", documents=True,
        )
        if entry is not None:
            self.versions[version] = {"version": version, **entry}
        return why

    def copy_store(self, writer: _ArchiveWriter, store: ModelStore) -> None:
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
        for version in _plain_entries(store.versions_dir):
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


def _copy_model(writer: _ArchiveWriter, registry: ModelRegistry, name: str) -> _ModelCopy:
    copied = _ModelCopy(name)
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


def create(
    out: IO[bytes],
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
    default_model: str,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Write a backup archive (gzip tar) of every model and data set to ``out``; returns its manifest.

    ``default_model``: MODEL_NAME, the name a single-model volume's store is archived under.
    """
    registry = ModelRegistry(Path(model_dir), None, default_model)
    dataset_root = Path(dataset_dir)
    notes: list[str] = []
    models: list[_ModelCopy] = []

    with tarfile.open(fileobj=out, mode="w|gz") as tar:
        writer = _ArchiveWriter(tar)

        # 1. Every model, one after the other (the default first).
        for name in registry.names():
            models.append(_copy_model(writer, registry, name))
            notes += models[-1].notes

        # 2. The uploaded data sets.
        datasets: list[dict[str, Any]] = []
        for dataset_id in _plain_entries(dataset_root):
            entry, why = _copy_dataset(writer, dataset_root, dataset_id)
            if entry is None:
                notes.append(f"data set {dataset_id!r} left out: {why}")
            else:
                datasets.append(entry)

        # 3. The native run's signing key, when asked for and present.
        key_included = False
        if signing_key_file is not None:
            try:
                with open(signing_key_file, "rb") as handle:
                    key = handle.read()
            except FileNotFoundError:
                notes.append(f"no signing key at {signing_key_file}: not included")
            else:
                writer.add_bytes(KEY_MEMBER, key, mode=KEY_MODE)
                key_included = True

        # 4. The side files and pointers as captured, then the manifest that describes everything.
        for model in models:
            for name, raw in model.side.items():
                writer.add_bytes(f"{_model_prefix(model.name)}/{name}", raw)
        for model in models:
            if model.pointer_raw is not None:
                writer.add_bytes(f"{_model_prefix(model.name)}/{POINTER_NAME}", model.pointer_raw)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": utc_iso(),
            "tpotserve_version": _package_version(),
            "default_model": registry.default_name,
            "models": {
                model.name: {
                    "pointer": model.pointer,
                    "versions": sorted(model.versions.values(), key=lambda v: v["version"]),
                }
                for model in models
            },
            "datasets": datasets,
            "signing_key": key_included,
            "notes": notes,
            "files": dict(sorted(writer.files.items())),
        }
        writer.add_bytes(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode())

    for note in notes:
        log(f"note: {note}")
    described = "; ".join(
        f"model {m.name}: {len(m.versions)} version(s), "
        + (f"current {m.pointer['version']}" if m.pointer else "no current version")
        for m in models
    ) or "no models"
    log(
        f"backup: {described}; {len(datasets)} data set(s), "
        f"signing key {'included' if key_included else 'not included'}"
    )
    return manifest


def create_file(
    target: Path,
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
    default_model: str,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Write the archive to ``target`` atomically (temp name beside it, then rename), mode 0600."""
    target = Path(target)
    if target.exists():
        raise BackupError(f"{target} already exists; a backup never overwrites another")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}{TMP_PREFIX}{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), KEY_MODE)
            manifest = create(
                handle, model_dir, dataset_dir, signing_key_file, default_model=default_model, log=log
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    log(f"wrote {target} ({target.stat().st_size} bytes)")
    return manifest


# --- restore ------------------------------------------------------------------
def _check_member(member: tarfile.TarInfo, dest: Path) -> re.Match[str]:
    """The member's parsed name; RestoreError for anything but a known name as a regular file."""
    data_filter = getattr(tarfile, "data_filter", None)  # Python >= 3.11.4; the checks below suffice alone
    if data_filter is not None:
        try:
            data_filter(member, str(dest))  # absolute paths, '..', links out, devices...
        except tarfile.FilterError as exc:
            raise RestoreError(f"archive member {member.name!r} is refused: {exc}") from exc
    match = _MEMBER.fullmatch(member.name)
    if match is None:
        raise RestoreError(
            f"archive member {member.name!r} is refused: not a file a tpotserve backup contains"
        )
    if match["model"] is not None:
        try:
            check_model_name(match["model"])
        except InvalidInput as exc:
            raise RestoreError(f"archive member {member.name!r} is refused: {exc}") from exc
    if not member.isfile():
        raise RestoreError(f"archive member {member.name!r} is refused: not a regular file")
    return match


def _store_in_use(store: ModelStore) -> list[str]:
    """What makes a model's store non-empty for a restore: current.json, complete versions, and
    the side files (a policy set there is not replaced without --force either)."""
    found = [POINTER_NAME] if store.pointer_path.exists() else []
    found += [name for name in SIDE_FILES if (store.root / name).exists()]
    found += [f"versions/{name}" for name in _plain_entries(store.versions_dir)]
    return found


def _refuse_non_empty(registry: ModelRegistry, name: str) -> None:
    store = registry.store(name)  # the default model: the single-model layout's, until it moved
    found = _store_in_use(store)
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise RestoreError(
            f"{store.root} already holds a model store of model {name!r} ({shown}); "
            "restore refuses to mix stores. Restore into an empty model directory, or pass --force "
            "to add the archive's versions and make its pointer current"
        )


def _write_stream(path: Path, source: IO[bytes], mode: int = FILE_MODE) -> dict[str, Any]:
    """Create ``path`` from ``source`` (it must not exist), fsynced; returns its sha256 and size."""
    sha = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            sha.update(chunk)
            size += len(chunk)
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return {"sha256": sha.hexdigest(), "bytes": size}


def _drain(
    source: IO[bytes], limit: int | None = None, name: str = ""
) -> tuple[dict[str, Any], bytes | None]:
    """Hash a member; keep its bytes when ``limit`` is given (RestoreError above it)."""
    sha = hashlib.sha256()
    size = 0
    kept = [] if limit is not None else None
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        sha.update(chunk)
        size += len(chunk)
        if kept is not None:
            if size > limit:
                raise RestoreError(f"archive member {name!r} is larger than {limit} bytes")
            kept.append(chunk)
    return {"sha256": sha.hexdigest(), "bytes": size}, (b"".join(kept) if kept is not None else None)


@dataclass
class _Staging:
    """Dot-prefixed directories on the targets' filesystems that restored files wait in."""

    roots: dict[str, Path] = field(default_factory=dict)

    def root(self, part: str, parent: Path) -> Path:
        if part not in self.roots:
            parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            path = parent / f"{RESTORE_STAGING_PREFIX}{secrets.token_hex(4)}"
            path.mkdir(mode=DIR_MODE)
            os.chmod(path, DIR_MODE)
            self.roots[part] = path
        return self.roots[part]

    def directory(self, part: str, parent: Path, *names: str) -> Path:
        path = self.root(part, parent)
        for name in names:
            path = path / name
            if not path.is_dir():
                path.mkdir(mode=DIR_MODE)
                os.chmod(path, DIR_MODE)
        return path

    def cleanup(self) -> None:
        for path in self.roots.values():
            shutil.rmtree(path, ignore_errors=True)


def _stage_key(model: str | None) -> str:
    """A model's staging directory: its name, or format 1's single store."""
    return LEGACY_STAGE if model is None else model


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise RestoreError(f"{what} is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class _Archived:
    """One model of an archive, verified."""

    name: str
    """Its name on the volume: format 1's single store is the default model."""
    member_name: str | None
    """Its name in the archive's member names; None for format 1."""
    pointer: dict[str, Any] | None
    versions: dict[str, str]
    """{version: sha256}, in the manifest's order."""
    side: tuple[str, ...] = ()
    """The side files the archive holds of it (format 3)."""

    @property
    def prefix(self) -> str:
        return _model_prefix(self.member_name)


def _manifest_models(
    manifest: dict[str, Any], default_model: str
) -> dict[str | None, tuple[str, dict[str, Any]]]:
    """{name in member names: (name on the volume, its manifest entry)}, for either format."""
    if manifest["format_version"] == 1:
        single = {"pointer": manifest.get("pointer"), "versions": manifest.get("versions")}
        return {None: (default_model, single)}
    models = manifest.get("models")
    if not isinstance(models, dict):
        raise RestoreError(f"{MANIFEST_NAME} lists no models")
    for name in models:
        try:
            check_model_name(name)
        except InvalidInput as exc:
            raise RestoreError(f"{MANIFEST_NAME} lists a model that cannot be restored: {exc}") from exc
    return {name: (name, entry) for name, entry in models.items()}


def _verify(
    manifest: Any, received: dict[str, dict[str, Any]], small: dict[str, bytes], default_model: str
) -> list[_Archived]:
    """Every file against the manifest, and every artifact against its metadata and its model's
    pointer; returns the archive's models."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RestoreError(f"{MANIFEST_NAME} does not describe a {FORMAT} archive")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise RestoreError(
            f"archive format version {manifest.get('format_version')!r}; "
            f"this tpotserve reads "
            f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise RestoreError(f"{MANIFEST_NAME} has no file list")
    missing = sorted(set(files) - set(received))
    if missing:
        raise RestoreError(f"the archive lacks {missing[0]!r} (listed in its manifest): it is incomplete")
    extra = sorted(set(received) - set(files))
    if extra:
        raise RestoreError(f"archive member {extra[0]!r} is not in the manifest: the archive was altered")
    for name, got in received.items():
        want = files[name]
        wanted = (want.get("sha256"), want.get("bytes")) if isinstance(want, dict) else None
        if (got["sha256"], got["bytes"]) != wanted:
            raise RestoreError(
                f"archive member {name!r} has sha256 {got['sha256'][:12]}... ({got['bytes']} bytes), "
                f"its manifest says {str(wanted[0] if wanted else want)[:12]}...: "
                "the archive is corrupt or was tampered with; nothing was restored"
            )

    listed = _manifest_models(manifest, default_model)
    members = [(name, _MEMBER.fullmatch(name)) for name in received]
    in_archive: dict[str | None, set[str]] = {}
    for name, match in members:
        if match and (match["version"] or match["pointer"] or match["side"]):
            if match["model"] not in listed:
                raise RestoreError(
                    f"archive member {name!r} belongs to no model its manifest lists "
                    f"(a format {manifest['format_version']} archive)"
                )
            if match["side"] and manifest["format_version"] < SIDE_FILES_SINCE:
                raise RestoreError(
                    f"archive member {name!r} is not in a format {manifest['format_version']} archive"
                )
            if match["version"]:
                in_archive.setdefault(match["model"], set()).add(match["version"])

    archived: list[_Archived] = []
    for member_name, (name, entry) in listed.items():
        prefix = _model_prefix(member_name)
        versions = _listed(
            entry.get("versions"), "version", f"{prefix}/versions", ARTIFACT_NAME, META_NAME, received, small,
            f"model {name!r} version",
        )
        if in_archive.get(member_name, set()) != set(versions):
            raise RestoreError(
                f"the archive's files of model {name!r} do not match the manifest's list of its versions"
            )
        pointer_member = f"{prefix}/{POINTER_NAME}"
        if pointer_member in received:
            pointer = _json(small[pointer_member], pointer_member)
            version = pointer.get("version") if isinstance(pointer, dict) else None
            if version not in versions or pointer.get("sha256") != versions[version]:
                raise RestoreError(
                    f"{pointer_member} names {version!r}, which the archive does not hold as such"
                )
            described = entry.get("pointer") or {}
            if described.get("version") != version or described.get("sha256") != pointer.get("sha256"):
                raise RestoreError(f"{pointer_member} differs from the manifest's pointer")
        elif entry.get("pointer"):
            raise RestoreError(f"the archive lacks {pointer_member}")
        side = tuple(file for file in SIDE_FILES if f"{prefix}/{file}" in received)
        archived.append(_Archived(name, member_name, entry.get("pointer"), versions, side))

    datasets = set(
        _listed(
            manifest.get("datasets"), "id", "datasets", DATASET_DATA_NAME, DATASET_META_NAME, received, small,
            "data set",
        )
    )
    if {m["dataset"] for _name, m in members if m and m["dataset"]} != datasets:
        raise RestoreError("the archive's data set files do not match the manifest's list of data sets")
    return archived


def _listed(
    entries: list[dict[str, Any]] | None,
    id_key: str,
    prefix: str,
    data_name: str,
    meta_name: str,
    received: dict[str, dict[str, Any]],
    small: dict[str, bytes],
    what: str,
) -> dict[str, str]:
    """{id: sha256} of the manifest's versions (or data sets), each checked to be in the archive
    whole, with its data file's sha256 equal to its metadata's and to the manifest's."""
    found: dict[str, str] = {}
    for entry in entries or []:
        name = entry[id_key]
        data, meta_member = f"{prefix}/{name}/{data_name}", f"{prefix}/{name}/{meta_name}"
        if data not in received or meta_member not in received:
            raise RestoreError(f"{what} {name!r} is incomplete in the archive")
        meta = _json(small[meta_member], meta_member)
        if not (meta.get("sha256") == entry["sha256"] == received[data]["sha256"]):
            raise RestoreError(f"{what} {name!r}: {data_name}'s sha256 does not match its metadata")
        found[name] = entry["sha256"]
    return found


def _staged_documents(
    staged: Path, member: str, meta_raw: bytes, small: dict[str, bytes], received: dict[str, dict[str, Any]]
) -> list[str]:
    """Write beside a staged version the documents its meta.json lists, each checked against the
    sha256 there; an archive that lacks one or holds another is refused. Their names."""
    try:
        listed = _documents(_json(meta_raw, f"{member}/{META_NAME}"))
    except TypeError as exc:
        raise RestoreError(f"{member}/{META_NAME}: {exc}") from exc
    held = {name.rsplit("/", 1)[1] for name in received if name.startswith(f"{member}/")}
    extra = held - {ARTIFACT_NAME, META_NAME, *listed}
    if extra:
        raise RestoreError(f"{member} holds {sorted(extra)}, which its {META_NAME} does not list")
    for name, sha in listed.items():
        raw = small.get(f"{member}/{name}")
        if raw is None:
            raise RestoreError(f"the archive lacks {member}/{name}, which its {META_NAME} lists")
        if hashlib.sha256(raw).hexdigest() != sha:
            raise RestoreError(f"{member}/{name} does not match the sha256 in its {META_NAME}")
        _write_stream(staged / name, io.BytesIO(raw))
    return sorted(listed)


def _same_tree(a: Path, b: Path, names: Iterable[str]) -> bool:
    try:
        return all(sha256_file(a / n) == sha256_file(b / n) for n in names)
    except OSError:
        return False


def _move_into_place(staged: Path, final: Path, names: tuple[str, ...], force: bool, what: str) -> str:
    """Rename a staged directory to ``final``: "restored", "unchanged" (identical one there) or "replaced"."""
    if final.exists():
        if _same_tree(staged, final, names):
            shutil.rmtree(staged)
            return "unchanged"
        if not force:
            raise RestoreError(f"{what} already exists with other content; pass --force to replace it")
        aside = final.parent / f"{TMP_PREFIX}replaced-{final.name}-{secrets.token_hex(4)}"
        os.rename(final, aside)
        os.rename(staged, final)
        shutil.rmtree(aside, ignore_errors=True)
        return "replaced"
    os.rename(staged, final)
    return "restored"


def _write_key(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
    try:
        _write_stream(tmp, io.BytesIO(key), mode=KEY_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def restore(
    source: IO[bytes],
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
    default_model: str,
    force: bool = False,
    only: str | None = None,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Restore an archive read from ``source`` (a stream is fine); returns its manifest.

    ``default_model``: MODEL_NAME, the name a format 1 archive's store is restored under.
    ``only``: "models" (every model's versions and pointer, the signing key) or "datasets"; None: both.
    """
    parts = {"models", "datasets"} if only is None else {only}
    if not parts <= {"models", "datasets"}:
        raise ValueError(f"only must be 'models' or 'datasets', not {only!r}")
    registry = ModelRegistry(Path(model_dir), None, default_model)
    dataset_root = Path(dataset_dir)

    staging = _Staging()
    received: dict[str, dict[str, Any]] = {}
    small: dict[str, bytes] = {}
    checked: set[str] = set()
    try:
        try:
            with tarfile.open(fileobj=source, mode="r|gz") as tar:
                for member in tar:
                    match = _check_member(member, registry.root)
                    if member.name in received:
                        raise RestoreError(f"archive member {member.name!r} appears twice")
                    model = match["model"] or registry.default_name
                    in_store = match["version"] or match["pointer"] or match["side"]
                    if in_store and "models" in parts and not force:
                        if model not in checked:  # before reading a possibly large model's files
                            _refuse_non_empty(registry, model)
                            checked.add(model)
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file
                    if match["version"] and match["vfile"] == ARTIFACT_NAME and "models" in parts:
                        target = staging.directory(
                            "models", registry.root, _stage_key(match["model"]), match["version"]
                        )
                        received[member.name] = _write_stream(target / ARTIFACT_NAME, handle)
                    elif match["dataset"] and match["dfile"] == DATASET_DATA_NAME and "datasets" in parts:
                        target = staging.directory("datasets", dataset_root, match["dataset"])
                        received[member.name] = _write_stream(target / DATASET_DATA_NAME, handle)
                    elif match["vfile"] == ARTIFACT_NAME or match["dfile"] == DATASET_DATA_NAME:
                        received[member.name], _ = _drain(handle)  # not restored: only verified
                    else:  # manifest, pointer, key, metadata: small, kept in memory
                        received[member.name], data = _drain(handle, SMALL_MEMBER_MAX_BYTES, member.name)
                        small[member.name] = data or b""
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise RestoreError(
                f"the archive cannot be read ({exc}): it is not a gzip tar or was cut short"
            ) from exc
        if MANIFEST_NAME not in small:
            raise RestoreError(f"the archive has no {MANIFEST_NAME}: not a tpotserve backup, or cut short")
        del received[MANIFEST_NAME]
        manifest = _json(small[MANIFEST_NAME], MANIFEST_NAME)
        try:
            archived = _verify(manifest, received, small, registry.default_name)
        except (KeyError, TypeError, AttributeError) as exc:
            raise RestoreError(f"{MANIFEST_NAME} is malformed: {exc!r}") from exc
        # A model with neither versions nor pointer (nor side files) has nothing to restore.
        models = [m for m in archived if m.versions or m.side] if "models" in parts else []

        # Every check before the first rename: conflicts refuse the whole restore.
        key = small.get(KEY_MEMBER) if "models" in parts else None
        write_key = False
        if key is not None and signing_key_file is not None:
            key_path = Path(signing_key_file)
            if key_path.exists() and key_path.read_bytes() != key:
                if not force:
                    raise RestoreError(
                        f"{key_path} holds another signing key; "
                        "the archive's models are signed with its own. "
                        "Move it away or pass --force to replace it"
                    )
            write_key = not key_path.exists() or key_path.read_bytes() != key
        if not force:
            for model in models:  # again: something may have appeared while we read
                _refuse_non_empty(registry, model.name)
        # Each model goes to models/<name>/, also the default model of a volume not moved yet
        # (the trainer's move keeps the restored pointer: see ModelRegistry.migrate_legacy).
        stores = {model.name: ModelStore(registry.models_dir / model.name) for model in models}

        # Metadata beside the staged data files: each staged directory is now a complete entry.
        plan: list[tuple[Path, Path, tuple[str, ...], str]] = []
        if "datasets" in parts:
            for entry in manifest.get("datasets") or []:
                dataset_id = entry["id"]
                staged = staging.directory("datasets", dataset_root, dataset_id)
                meta_raw = small[f"datasets/{dataset_id}/{DATASET_META_NAME}"]
                _write_stream(staged / DATASET_META_NAME, io.BytesIO(meta_raw))
                fsync_dir(staged)
                names = (DATASET_DATA_NAME, DATASET_META_NAME)
                plan.append((staged, dataset_root / dataset_id, names, f"data set {dataset_id!r}"))
        for model in models:
            for version in model.versions:
                staged = staging.directory("models", registry.root, _stage_key(model.member_name), version)
                member = f"{model.prefix}/versions/{version}"
                meta_raw = small[f"{member}/{META_NAME}"]
                _write_stream(staged / META_NAME, io.BytesIO(meta_raw))
                documents = _staged_documents(staged, member, meta_raw, small, received)
                fsync_dir(staged)
                names = (ARTIFACT_NAME, META_NAME, *documents)
                final = stores[model.name].versions_dir / version
                plan.append((staged, final, names, f"model {model.name!r} version {version!r}"))
        if not force:
            for staged, final, names, what in plan:
                if final.exists() and not _same_tree(staged, final, names):
                    raise RestoreError(
                        f"{what} already exists with other content; pass --force to replace it"
                    )

        # Data sets, then every model's versions, then the key; the pointers last.
        summary: dict[str, list[str]] = {"restored": [], "unchanged": [], "replaced": []}
        for staged, final, names, what in plan:
            final.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            summary[_move_into_place(staged, final, names, force, what)].append(what)
        for directory in {final.parent for _staged, final, _names, _what in plan}:
            fsync_dir(directory)
        if models:
            fsync_dir(registry.models_dir)
        if "models" in parts:
            if write_key:
                _write_key(Path(signing_key_file), key)  # type: ignore[arg-type]
            elif key is not None and signing_key_file is None:
                log("note: the archive holds a signing key; not restored "
                    "(give --signing-key-file or --data-dir)")
            # Then every model's side files, byte for byte, each replaced atomically: before any
            # pointer, so a restore that fails here has written none (the versions they may
            # name, shadow.json's, are in place already). A side file the archive lacks (a
            # format 2 archive has none) is neither created nor, with --force, removed.
            for model in models:
                for name in model.side:
                    stores[model.name].root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
                    replace_file(stores[model.name].root / name, small[f"{model.prefix}/{name}"])
            # Last: each pointer, atomically. Until here the API kept serving what it served.
            for model in models:
                pointer_member = f"{model.prefix}/{POINTER_NAME}"
                if pointer_member in small:
                    replace_file(stores[model.name].pointer_path, small[pointer_member])
    finally:
        staging.cleanup()

    current = "; ".join(f"{m.name} {m.pointer['version']}" for m in models if m.pointer)
    counts = ", ".join(f"{len(items)} {state}" for state, items in summary.items() if items)
    counts = counts or "nothing to restore"
    log(f"restore: {counts}" + (f"; current: {current}" if current else ""))
    return manifest


def restore_file(
    path: Path, model_dir: Path, dataset_dir: Path, signing_key_file: Path | None = None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`restore` from a file."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise RestoreError(f"cannot open {path}: {exc.strerror}") from exc
    with handle:
        return restore(handle, model_dir, dataset_dir, signing_key_file, **kwargs)


# --- command line ---------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tpotserve.backup",
        description="Back up and restore every model and the uploaded data sets (docs/operations.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("create", "write a backup archive (a path, or - for stdout)"),
        ("restore", "restore a backup archive (a path, or - for stdin)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("archive", help="the .tar.gz archive; - for stdout/stdin")
        sub.add_argument(
            "--data-dir",
            type=Path,
            help="the native run's DATA_DIR: DIR/models, DIR/datasets, DIR/signing.key",
        )
        sub.add_argument("--model-dir", type=Path, help="the model volume (default: MODEL_DIR)")
        sub.add_argument("--dataset-dir", type=Path, help="the uploaded data sets (default: DATASET_DIR)")
        sub.add_argument(
            "--signing-key-file",
            type=Path,
            help="the native run's generated signing key: included when it exists / restored to this path",
        )
        if name == "restore":
            sub.add_argument(
                "--force", action="store_true", help="restore models that already have a store on the volume"
            )
            sub.add_argument("--only", choices=("models", "datasets"), help="restore one part only")
    return parser


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path | None, str]:
    from .settings import load_settings

    settings = load_settings()
    data_dir: Path | None = args.data_dir
    model_dir = args.model_dir or (data_dir / "models" if data_dir else settings.model_dir)
    dataset_dir = args.dataset_dir or (data_dir / "datasets" if data_dir else settings.dataset_dir)
    key_file = args.signing_key_file or (data_dir / "signing.key" if data_dir else None)
    return model_dir, dataset_dir, key_file, settings.model_name


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir, dataset_dir, key_file, default_model = _paths(args)
    try:
        if args.command == "create":
            if args.archive == "-":
                if sys.stdout.isatty():
                    raise BackupError("refusing to write a binary archive to a terminal; redirect stdout")
                create(sys.stdout.buffer, model_dir, dataset_dir, key_file, default_model=default_model)
                sys.stdout.buffer.flush()
            else:
                create_file(Path(args.archive), model_dir, dataset_dir, key_file, default_model=default_model)
        else:
            options = {"force": args.force, "only": args.only, "default_model": default_model}
            if args.archive == "-":
                restore(sys.stdin.buffer, model_dir, dataset_dir, key_file, **options)
            else:
                restore_file(Path(args.archive), model_dir, dataset_dir, key_file, **options)
    except (BackupError, RestoreError) as exc:
        _stderr(f"{args.command} failed: {exc}")
        return 1
    except OSError as exc:  # disk full, permissions, a vanished directory...
        _stderr(f"{args.command} failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
