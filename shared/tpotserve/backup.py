"""Backups of the model store and the uploaded data sets, consistent while the stack runs.

    python -m tpotserve.backup create ARCHIVE|-            # - writes the archive to stdout
    python -m tpotserve.backup restore ARCHIVE|- [--force] [--only models|datasets]

Both read MODEL_DIR and DATASET_DIR from :mod:`tpotserve.settings` unless
``--model-dir``/``--dataset-dir`` (or ``--data-dir DIR``: the native run's
layout ``DIR/models``, ``DIR/datasets``, ``DIR/signing.key``) say otherwise.

The archive is a gzip tar:

    models/versions/<version>/model.joblib   every complete version, byte for byte
    models/versions/<version>/meta.json
    datasets/<id>/data.csv, datasets/<id>/meta.json
    signing.key                               only with --signing-key-file, when the file exists
    models/current.json                       the pointer, as read when the backup started
    manifest.json                             last: format, created_at, the pointer, every
                                              version's and data set's sha256, every file's sha256

Why a backup of a running stack is consistent: versions and data sets are
immutable once renamed into place, and temp directories (dot-prefixed) are
never read. The pointer is read first and its version (and ``previous``)
copied first; a version that retention deletes while the backup runs is left
out with a note, except the pointer's, for which the pointer is read again
(bounded). Every artifact is hashed as it streams into the archive and must
match its metadata, so a corrupt or half-read file fails the backup instead of
producing a bad archive. A backup file is written under a temp name beside the
target (mode 0600: it may hold the signing key) and renamed when complete.

A restore refuses a model directory that already holds a store (unless
``--force``), accepts only the member names above as regular files (checked
with tarfile's ``data`` filter too), verifies every file against the manifest
and every artifact against its metadata, stages versions and data sets in a
dot-prefixed directory on the target filesystem, renames them into place, and
writes ``current.json`` last, atomically. An interrupted or rejected restore
therefore never leaves a pointer naming a missing version, and restoring
under a running API is safe: its workers follow the pointer when it appears.
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
from .store import ARTIFACT_NAME, META_NAME, POINTER_NAME, ModelStore

__all__ = ["BackupError", "RestoreError", "create", "create_file", "main", "restore", "restore_file"]

FORMAT = "tpotserve-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KEY_MEMBER = "signing.key"
POINTER_MEMBER = f"models/{POINTER_NAME}"
# The data set store's file names (tpotserve.datasets; not imported: it pulls in pandas).
DATASET_DATA_NAME = "data.csv"
DATASET_META_NAME = "meta.json"
# How often the pointer is read again when its version vanished during a backup
# (retention deleted it after a newer version was published and activated).
POINTER_ATTEMPTS = 3
# Members read into memory (manifest, pointer, metadata, key) may not be larger.
SMALL_MEMBER_MAX_BYTES = 16 * 1024 * 1024
RESTORE_STAGING_PREFIX = ".restore-"
KEY_MODE = 0o600
_CHUNK = 1 << 20

_NAME = r"(?!\.)[^/\x00]{1,100}"  # a version or data set id: a plain name, as the stores require
_MEMBER = re.compile(
    rf"(?P<manifest>{re.escape(MANIFEST_NAME)})"
    rf"|(?P<key>{re.escape(KEY_MEMBER)})"
    rf"|(?P<pointer>{re.escape(POINTER_MEMBER)})"
    rf"|models/versions/(?P<version>{_NAME})/(?P<vfile>{re.escape(ARTIFACT_NAME)}|{re.escape(META_NAME)})"
    rf"|datasets/(?P<dataset>{_NAME})/"
    rf"(?P<dfile>{re.escape(DATASET_DATA_NAME)}|{re.escape(DATASET_META_NAME)})"
)


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


def _copy_entry(
    writer: _ArchiveWriter, directory: Path, prefix: str, data_name: str, meta_name: str, what: str
) -> tuple[dict[str, Any] | None, str]:
    """Copy a version or a data set (a data file and its meta.json with the data's sha256) into
    the archive under ``prefix``: (sha256 and size, "") or (None, why it was left out)."""
    try:
        with _open_for_copy(directory / meta_name) as handle:
            meta_raw = handle.read()
            meta_mtime = os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        return None, (f"has no {meta_name} (incomplete)" if directory.is_dir() else "vanished")
    try:
        expected = json.loads(meta_raw)["sha256"]
        if not isinstance(expected, str):
            raise TypeError("sha256 is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{what}: {meta_name} is unreadable: {exc}") from exc
    try:
        handle = _open_for_copy(directory / data_name)
    except FileNotFoundError:
        return None, (f"has no {data_name} (incomplete)" if directory.is_dir() else "vanished")
    # Once open, the file is read whole even if retention deletes the version meanwhile.
    with handle:
        entry = writer.add_verified(f"{prefix}/{data_name}", handle, expected, what)
    writer.add_bytes(f"{prefix}/{meta_name}", meta_raw, mtime=meta_mtime)
    return {"sha256": expected, "bytes": entry["bytes"]}, ""


def _copy_version(writer: _ArchiveWriter, store: ModelStore, name: str) -> tuple[dict[str, Any] | None, str]:
    entry, why = _copy_entry(
        writer, store.versions_dir / name, f"models/versions/{name}", ARTIFACT_NAME, META_NAME,
        f"model version {name!r}",
    )
    return ({"version": name, **entry} if entry else None), why


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


def create(
    out: IO[bytes],
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Write a backup archive (gzip tar) to ``out``; returns its manifest."""
    store = ModelStore(Path(model_dir))
    dataset_root = Path(dataset_dir)
    notes: list[str] = []
    versions: dict[str, dict[str, Any]] = {}

    with tarfile.open(fileobj=out, mode="w|gz") as tar:
        writer = _ArchiveWriter(tar)

        # 1. The pointer first, then its versions at once: the window in which they could go is tiny.
        pointer_raw, pointer = _read_pointer(store)
        for attempt in range(1, POINTER_ATTEMPTS + 1):
            if pointer is None:
                break
            wanted = [v for v in (pointer["version"], pointer["previous"]) if v]
            for name in wanted:
                if name not in versions:
                    entry, _why = _copy_version(writer, store, name)
                    if entry is not None:
                        versions[name] = entry
            if all(name in versions for name in wanted):
                break
            if attempt < POINTER_ATTEMPTS:
                # Retention deleted one: the pointer moved on since we read it. Follow it.
                pointer_raw, pointer = _read_pointer(store)
        if pointer is not None:
            if pointer["version"] not in versions:
                raise BackupError(
                    f"the current version {pointer['version']!r} named by {POINTER_NAME} is not in the store "
                    f"(read {POINTER_ATTEMPTS} times); no backup was made"
                )
            if versions[pointer["version"]]["sha256"] != pointer["sha256"]:
                raise BackupError(
                    f"{POINTER_NAME} names version {pointer['version']!r} "
                    f"with sha256 {pointer['sha256'][:12]}..., "
                    f"but that version's metadata says {versions[pointer['version']]['sha256'][:12]}...; "
                    "no backup was made"
                )
            if pointer["previous"] and pointer["previous"] not in versions:
                notes.append(
                    f"the previous version {pointer['previous']!r} named by {POINTER_NAME} "
                    "is not in the store"
                )

        # 2. Every other complete version; one retention deletes meanwhile is left out.
        for name in _plain_entries(store.versions_dir):
            if name in versions:
                continue
            entry, why = _copy_version(writer, store, name)
            if entry is None:
                reason = "deleted by retention while the backup ran" if why == "vanished" else why
                notes.append(f"model version {name!r} left out: {reason}")
            else:
                versions[name] = entry

        # 3. The uploaded data sets.
        datasets: list[dict[str, Any]] = []
        for dataset_id in _plain_entries(dataset_root):
            entry, why = _copy_dataset(writer, dataset_root, dataset_id)
            if entry is None:
                notes.append(f"data set {dataset_id!r} left out: {why}")
            else:
                datasets.append(entry)

        # 4. The native run's signing key, when asked for and present.
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

        # 5. The pointer as captured, then the manifest that describes everything.
        if pointer_raw is not None:
            writer.add_bytes(POINTER_MEMBER, pointer_raw)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": utc_iso(),
            "tpotserve_version": _package_version(),
            "pointer": pointer,
            "versions": sorted(versions.values(), key=lambda v: v["version"]),
            "datasets": datasets,
            "signing_key": key_included,
            "notes": notes,
            "files": dict(sorted(writer.files.items())),
        }
        writer.add_bytes(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode())

    for note in notes:
        log(f"note: {note}")
    current = f", current {pointer['version']}" if pointer else ", no current model"
    log(
        f"backup: {len(versions)} model version(s){current}, {len(datasets)} data set(s), "
        f"signing key {'included' if key_included else 'not included'}"
    )
    return manifest


def create_file(
    target: Path,
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
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
            manifest = create(handle, model_dir, dataset_dir, signing_key_file, log=log)
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
    if not member.isfile():
        raise RestoreError(f"archive member {member.name!r} is refused: not a regular file")
    return match


def _store_in_use(store: ModelStore) -> list[str]:
    """What makes a model directory non-empty for a restore: current.json and complete versions."""
    found = [POINTER_NAME] if store.pointer_path.exists() else []
    found += [f"versions/{name}" for name in _plain_entries(store.versions_dir)]
    return found


def _refuse_non_empty(store: ModelStore) -> None:
    found = _store_in_use(store)
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise RestoreError(
            f"{store.root} already holds a model store ({shown}); restore refuses to mix stores. "
            "Restore into an empty model directory, or pass --force to add the archive's versions "
            "and make its pointer current"
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

    def directory(self, part: str, parent: Path, name: str) -> Path:
        path = self.root(part, parent) / name
        if not path.is_dir():
            path.mkdir(mode=DIR_MODE)
            os.chmod(path, DIR_MODE)
        return path

    def cleanup(self) -> None:
        for path in self.roots.values():
            shutil.rmtree(path, ignore_errors=True)


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise RestoreError(f"{what} is not valid JSON: {exc}") from exc


def _verify(manifest: Any, received: dict[str, dict[str, Any]], small: dict[str, bytes]) -> None:
    """Every file against the manifest, and every artifact against its metadata and the pointer."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RestoreError(f"{MANIFEST_NAME} does not describe a {FORMAT} archive")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RestoreError(
            f"archive format version {manifest.get('format_version')!r}; "
            f"this tpotserve reads {FORMAT_VERSION}"
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

    versions = _listed(
        manifest.get("versions"), "version", "models/versions", ARTIFACT_NAME, META_NAME, received, small,
        "model version",
    )
    in_archive = {m["version"] for m in _version_members(received)}
    if in_archive != set(versions):
        raise RestoreError("the archive's model files do not match the manifest's list of versions")

    datasets = set(
        _listed(
            manifest.get("datasets"), "id", "datasets", DATASET_DATA_NAME, DATASET_META_NAME, received, small,
            "data set",
        )
    )
    if {m["dataset"] for m in _dataset_members(received)} != datasets:
        raise RestoreError("the archive's data set files do not match the manifest's list of data sets")

    if POINTER_MEMBER in received:
        pointer = _json(small[POINTER_MEMBER], POINTER_MEMBER)
        version = pointer.get("version") if isinstance(pointer, dict) else None
        if version not in versions or pointer.get("sha256") != versions[version]:
            raise RestoreError(f"{POINTER_MEMBER} names {version!r}, which the archive does not hold as such")
        described = manifest.get("pointer") or {}
        if described.get("version") != version or described.get("sha256") != pointer.get("sha256"):
            raise RestoreError(f"{POINTER_MEMBER} differs from the manifest's pointer")
    elif manifest.get("pointer"):
        raise RestoreError(f"the archive lacks {POINTER_MEMBER}")


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


def _version_members(names: Iterable[str]) -> list[re.Match[str]]:
    return [m for m in (_MEMBER.fullmatch(n) for n in names) if m and m["version"]]


def _dataset_members(names: Iterable[str]) -> list[re.Match[str]]:
    return [m for m in (_MEMBER.fullmatch(n) for n in names) if m and m["dataset"]]


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
    force: bool = False,
    only: str | None = None,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Restore an archive read from ``source`` (a stream is fine); returns its manifest.

    ``only``: "models" (versions, pointer, signing key) or "datasets"; None: both.
    """
    parts = {"models", "datasets"} if only is None else {only}
    if not parts <= {"models", "datasets"}:
        raise ValueError(f"only must be 'models' or 'datasets', not {only!r}")
    store = ModelStore(Path(model_dir))
    dataset_root = Path(dataset_dir)
    if "models" in parts and not force:
        _refuse_non_empty(store)  # before reading a possibly large archive

    staging = _Staging()
    received: dict[str, dict[str, Any]] = {}
    small: dict[str, bytes] = {}
    try:
        try:
            with tarfile.open(fileobj=source, mode="r|gz") as tar:
                for member in tar:
                    match = _check_member(member, store.root)
                    if member.name in received:
                        raise RestoreError(f"archive member {member.name!r} appears twice")
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file
                    if match["version"] and match["vfile"] == ARTIFACT_NAME and "models" in parts:
                        target = staging.directory("models", store.root, match["version"])
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
            _verify(manifest, received, small)
        except (KeyError, TypeError, AttributeError) as exc:
            raise RestoreError(f"{MANIFEST_NAME} is malformed: {exc!r}") from exc

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
        if "models" in parts and not force:
            _refuse_non_empty(store)  # again: something may have appeared while we read

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
        if "models" in parts:
            for entry in manifest.get("versions") or []:
                name = entry["version"]
                staged = staging.directory("models", store.root, name)
                _write_stream(staged / META_NAME, io.BytesIO(small[f"models/versions/{name}/{META_NAME}"]))
                fsync_dir(staged)
                names = (ARTIFACT_NAME, META_NAME)
                plan.append((staged, store.versions_dir / name, names, f"model version {name!r}"))
        if not force:
            for staged, final, names, what in plan:
                if final.exists() and not _same_tree(staged, final, names):
                    raise RestoreError(f"{what} already exists with other content; pass --force to replace it")

        # Data sets, then versions, then the key; the pointer last.
        summary: dict[str, list[str]] = {"restored": [], "unchanged": [], "replaced": []}
        for staged, final, names, what in plan:
            final.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            summary[_move_into_place(staged, final, names, force, what)].append(what)
        for directory in {final.parent for _staged, final, _names, _what in plan}:
            fsync_dir(directory)
        if "models" in parts:
            store.versions_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            if write_key:
                _write_key(Path(signing_key_file), key)  # type: ignore[arg-type]
            elif key is not None and signing_key_file is None:
                log("note: the archive holds a signing key; not restored "
                    "(give --signing-key-file or --data-dir)")
            # Last: the pointer, atomically. Until here the API kept serving what it served.
            if POINTER_MEMBER in small:
                store.root.mkdir(parents=True, exist_ok=True)
                replace_file(store.pointer_path, small[POINTER_MEMBER])
    finally:
        staging.cleanup()

    pointer = manifest.get("pointer")
    current = f"; current: {pointer['version']}" if "models" in parts and pointer else ""
    counts = ", ".join(f"{len(items)} {state}" for state, items in summary.items() if items)
    counts = counts or "nothing to restore"
    log(f"restore: {counts}{current}")
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
        description="Back up and restore the model store and the uploaded data sets (docs/operations.md).",
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
        sub.add_argument("--model-dir", type=Path, help="the model store (default: MODEL_DIR)")
        sub.add_argument("--dataset-dir", type=Path, help="the uploaded data sets (default: DATASET_DIR)")
        sub.add_argument(
            "--signing-key-file",
            type=Path,
            help="the native run's generated signing key: included when it exists / restored to this path",
        )
        if name == "restore":
            sub.add_argument(
                "--force", action="store_true", help="restore into a model directory that holds a store"
            )
            sub.add_argument("--only", choices=("models", "datasets"), help="restore one part only")
    return parser


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    from .settings import load_settings

    settings = load_settings()
    data_dir: Path | None = args.data_dir
    model_dir = args.model_dir or (data_dir / "models" if data_dir else settings.model_dir)
    dataset_dir = args.dataset_dir or (data_dir / "datasets" if data_dir else settings.dataset_dir)
    key_file = args.signing_key_file or (data_dir / "signing.key" if data_dir else None)
    return model_dir, dataset_dir, key_file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir, dataset_dir, key_file = _paths(args)
    try:
        if args.command == "create":
            if args.archive == "-":
                if sys.stdout.isatty():
                    raise BackupError("refusing to write a binary archive to a terminal; redirect stdout")
                create(sys.stdout.buffer, model_dir, dataset_dir, key_file)
                sys.stdout.buffer.flush()
            else:
                create_file(Path(args.archive), model_dir, dataset_dir, key_file)
        else:
            options = {"force": args.force, "only": args.only}
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
