"""Restoring an archive, in named steps: stage (read it, checking each member, into a staging
directory), verify (:mod:`.verify`), plan (every check before the first rename) and apply.

A restore refuses when any model the archive holds already has a store on the
volume (unless ``--force``; a side file counts too): checked at the first
member of each model, before its files are read, and again before the first
rename. It verifies every file against the manifest and every artifact against its
metadata; stages versions and data sets in a dot-prefixed directory on the
target filesystem, renames them into place, then replaces every model's side
files (each atomically, byte for byte; one the archive lacks is left as it is),
and writes each model's ``current.json`` last, atomically, after every model's
versions and side files. An interrupted or rejected restore therefore
never leaves a pointer naming a missing version, and restoring under a running
API is safe: its workers follow a pointer when it appears.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..atomic import DIR_MODE, TMP_PREFIX, fsync_dir, new_file, replace_file, sha256_file
from ..names import DATASET_DATA_NAME, DATASET_META_NAME
from ..registry import ModelRegistry
from ..store import ARTIFACT_NAME, META_NAME, POINTER_NAME, SIDECAR_NAME, ModelStore
from .common import Log, RestoreError, plain_entries, stderr
from .format import (
    KEY_MEMBER,
    KEY_MODE,
    MANIFEST_NAME,
    SIDE_FILES,
    SMALL_MEMBER_MAX_BYTES,
    sidecar_documents,
    version_documents,
)
from .verify import Archived, check_member, parse_json, verify_archive

RESTORE_STAGING_PREFIX = ".restore-"
LEGACY_STAGE = "-format-1"  # a format 1 archive's store while staged: no model name starts with "-"
_CHUNK = 1 << 20


def _store_in_use(store: ModelStore) -> list[str]:
    """What makes a model's store non-empty for a restore: current.json, complete versions, and
    the side files (a policy set there is not replaced without --force either)."""
    found = [POINTER_NAME] if store.pointer_path.exists() else []
    found += [name for name in SIDE_FILES if (store.root / name).exists()]
    found += [f"versions/{name}" for name in plain_entries(store.versions_dir)]
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


def _write_stream(path: Path, source: IO[bytes]) -> dict[str, Any]:
    """Create ``path`` from ``source`` (it must not exist), fsynced; returns its sha256 and size."""
    sha = hashlib.sha256()
    size = 0
    with new_file(path) as handle:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            sha.update(chunk)
            size += len(chunk)
            handle.write(chunk)
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


def _staged_documents(
    staged: Path, member: str, meta_raw: bytes, small: dict[str, bytes], received: dict[str, dict[str, Any]]
) -> list[str]:
    """Write beside a staged version the documents its meta.json lists, each checked against the
    sha256 there, and a compiled form added after publishing (compiled.json and the model.onnx it
    covers, checked against it); an archive that lacks one or holds another is refused. Their names."""
    meta = parse_json(meta_raw, f"{member}/{META_NAME}")
    try:
        listed = version_documents(meta)
    except TypeError as exc:
        raise RestoreError(f"{member}/{META_NAME}: {exc}") from exc
    by = {name: META_NAME for name in listed}
    sidecar = small.get(f"{member}/{SIDECAR_NAME}")
    if sidecar is not None:
        try:
            covered = sidecar_documents(meta, sidecar)
        except ValueError as exc:
            raise RestoreError(f"{member}/{SIDECAR_NAME}: {exc}") from exc
        listed = {**listed, **covered}
        by.update({name: SIDECAR_NAME for name in covered})
    held = {name.rsplit("/", 1)[1] for name in received if name.startswith(f"{member}/")}
    extra = held - {ARTIFACT_NAME, META_NAME, *listed, *([SIDECAR_NAME] if sidecar is not None else [])}
    if extra:
        raise RestoreError(f"{member} holds {sorted(extra)}, which its {META_NAME} does not list")
    for name, sha in listed.items():
        raw = small.get(f"{member}/{name}")
        if raw is None:
            raise RestoreError(f"the archive lacks {member}/{name}, which its {by[name]} lists")
        if hashlib.sha256(raw).hexdigest() != sha:
            raise RestoreError(f"{member}/{name} does not match the sha256 in its {by[name]}")
        _write_stream(staged / name, io.BytesIO(raw))
    if sidecar is not None:  # last, as add_compiled writes it: it is what the API looks for
        _write_stream(staged / SIDECAR_NAME, io.BytesIO(sidecar))
        return sorted([*listed, SIDECAR_NAME])
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



Move = tuple[Path, Path, tuple[str, ...], str]
"""A staged directory, its final place, the files it holds, what it is (for messages)."""


@dataclass
class _Plan:
    """What a restore will do once every check passed: nothing is renamed before."""

    models: list[Archived]
    """The archive's models to restore (none unless models are)."""
    stores: dict[str, ModelStore]
    moves: list[Move]
    key: bytes | None
    write_key: bool


@dataclass
class _Restore:
    """One restore, step by step: :meth:`stage`, :meth:`verify`, :meth:`plan`, :meth:`apply`."""

    registry: ModelRegistry
    dataset_root: Path
    parts: set[str]
    force: bool
    staging: _Staging = field(default_factory=_Staging)
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{member name: its sha256 and size}, every member read."""
    small: dict[str, bytes] = field(default_factory=dict)
    """The members kept in memory: manifest, pointers, side files, metadata, key."""
    checked: set[str] = field(default_factory=set)
    """The models already found without a store on the volume."""

    def stage(self, source: IO[bytes]) -> None:
        """Read the archive: every member checked as it comes; the artifacts and data files of the
        parts restored written into staging, the others only hashed; small members kept."""
        try:
            with tarfile.open(fileobj=source, mode="r|gz") as tar:
                for member in tar:
                    self._receive(tar, member)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise RestoreError(
                f"the archive cannot be read ({exc}): it is not a gzip tar or was cut short"
            ) from exc

    def _receive(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        match = check_member(member, self.registry.root)
        if member.name in self.received:
            raise RestoreError(f"archive member {member.name!r} appears twice")
        model = match["model"] or self.registry.default_name
        in_store = match["version"] or match["pointer"] or match["side"]
        if in_store and "models" in self.parts and not self.force:
            if model not in self.checked:  # before reading a possibly large model's files
                _refuse_non_empty(self.registry, model)
                self.checked.add(model)
        handle = tar.extractfile(member)
        assert handle is not None  # a regular file
        if match["version"] and match["vfile"] == ARTIFACT_NAME and "models" in self.parts:
            target = self.staging.directory(
                "models", self.registry.root, _stage_key(match["model"]), match["version"]
            )
            self.received[member.name] = _write_stream(target / ARTIFACT_NAME, handle)
        elif match["dataset"] and match["dfile"] == DATASET_DATA_NAME and "datasets" in self.parts:
            target = self.staging.directory("datasets", self.dataset_root, match["dataset"])
            self.received[member.name] = _write_stream(target / DATASET_DATA_NAME, handle)
        elif match["vfile"] == ARTIFACT_NAME or match["dfile"] == DATASET_DATA_NAME:
            self.received[member.name], _ = _drain(handle)  # not restored: only verified
        else:  # manifest, pointer, key, metadata: small, kept in memory
            self.received[member.name], data = _drain(handle, SMALL_MEMBER_MAX_BYTES, member.name)
            self.small[member.name] = data or b""

    def verify(self) -> tuple[dict[str, Any], list[Archived]]:
        """The manifest, and the archive's models, every file checked against it."""
        if MANIFEST_NAME not in self.small:
            raise RestoreError(f"the archive has no {MANIFEST_NAME}: not a tpotserve backup, or cut short")
        del self.received[MANIFEST_NAME]
        manifest = parse_json(self.small[MANIFEST_NAME], MANIFEST_NAME)
        try:
            archived = verify_archive(manifest, self.received, self.small, self.registry.default_name)
        except (KeyError, TypeError, AttributeError) as exc:
            raise RestoreError(f"{MANIFEST_NAME} is malformed: {exc!r}") from exc
        return manifest, archived

    def plan(self, manifest: dict[str, Any], archived: list[Archived], signing_key_file: Path | None) -> _Plan:
        """Every check before the first rename: conflicts refuse the whole restore."""
        # A model with neither versions nor pointer (nor side files) has nothing to restore.
        models = [m for m in archived if m.versions or m.side] if "models" in self.parts else []
        key, write_key = self._check_key(signing_key_file)
        if not self.force:
            for model in models:  # again: something may have appeared while we read
                _refuse_non_empty(self.registry, model.name)
        # Each model goes to models/<name>/, also the default model of a volume not moved yet
        # (the trainer's move keeps the restored pointer: see ModelRegistry.migrate_legacy).
        stores = {model.name: ModelStore(self.registry.models_dir / model.name) for model in models}

        # Metadata beside the staged data files: each staged directory is now a complete entry.
        moves = self._dataset_moves(manifest) if "datasets" in self.parts else []
        for model in models:
            moves += self._version_moves(model, stores[model.name])
        if not self.force:
            for staged, final, names, what in moves:
                if final.exists() and not _same_tree(staged, final, names):
                    raise RestoreError(
                        f"{what} already exists with other content; pass --force to replace it"
                    )
        return _Plan(models, stores, moves, key, write_key)

    def _check_key(self, signing_key_file: Path | None) -> tuple[bytes | None, bool]:
        """The archive's signing key (when models are restored), and whether to write it there."""
        key = self.small.get(KEY_MEMBER) if "models" in self.parts else None
        write_key = False
        if key is not None and signing_key_file is not None:
            key_path = Path(signing_key_file)
            if key_path.exists() and key_path.read_bytes() != key:
                if not self.force:
                    raise RestoreError(
                        f"{key_path} holds another signing key; "
                        "the archive's models are signed with its own. "
                        "Move it away or pass --force to replace it"
                    )
            write_key = not key_path.exists() or key_path.read_bytes() != key
        return key, write_key

    def _dataset_moves(self, manifest: dict[str, Any]) -> list[Move]:
        moves: list[Move] = []
        for entry in manifest.get("datasets") or []:
            dataset_id = entry["id"]
            staged = self.staging.directory("datasets", self.dataset_root, dataset_id)
            meta_raw = self.small[f"datasets/{dataset_id}/{DATASET_META_NAME}"]
            _write_stream(staged / DATASET_META_NAME, io.BytesIO(meta_raw))
            fsync_dir(staged)
            names = (DATASET_DATA_NAME, DATASET_META_NAME)
            moves.append((staged, self.dataset_root / dataset_id, names, f"data set {dataset_id!r}"))
        return moves

    def _version_moves(self, model: Archived, store: ModelStore) -> list[Move]:
        moves: list[Move] = []
        for version in model.versions:
            staged = self.staging.directory("models", self.registry.root, _stage_key(model.member_name), version)
            member = f"{model.prefix}/versions/{version}"
            meta_raw = self.small[f"{member}/{META_NAME}"]
            _write_stream(staged / META_NAME, io.BytesIO(meta_raw))
            documents = _staged_documents(staged, member, meta_raw, self.small, self.received)
            fsync_dir(staged)
            names = (ARTIFACT_NAME, META_NAME, *documents)
            final = store.versions_dir / version
            moves.append((staged, final, names, f"model {model.name!r} version {version!r}"))
        return moves

    def apply(self, plan: _Plan, signing_key_file: Path | None, log: Log) -> dict[str, list[str]]:
        """Data sets, then every model's versions, then the key; the pointers last. What each
        staged directory became: {"restored" | "unchanged" | "replaced": [what]}."""
        summary: dict[str, list[str]] = {"restored": [], "unchanged": [], "replaced": []}
        for staged, final, names, what in plan.moves:
            final.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            summary[_move_into_place(staged, final, names, self.force, what)].append(what)
        for directory in {final.parent for _staged, final, _names, _what in plan.moves}:
            fsync_dir(directory)
        if plan.models:
            fsync_dir(self.registry.models_dir)
        if "models" in self.parts:
            if plan.write_key:
                _write_key(Path(signing_key_file), plan.key)  # type: ignore[arg-type]
            elif plan.key is not None and signing_key_file is None:
                log("note: the archive holds a signing key; not restored "
                    "(give --signing-key-file or --data-dir)")
            self._write_side_files_then_pointers(plan)
        return summary

    def _write_side_files_then_pointers(self, plan: _Plan) -> None:
        # Then every model's side files, byte for byte, each replaced atomically: before any
        # pointer, so a restore that fails here has written none (the versions they may
        # name, shadow.json's, are in place already). A side file the archive lacks (a
        # format 2 archive has none) is neither created nor, with --force, removed.
        for model in plan.models:
            for name in model.side:
                plan.stores[model.name].root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
                replace_file(plan.stores[model.name].root / name, self.small[f"{model.prefix}/{name}"])
        # Last: each pointer, atomically. Until here the API kept serving what it served.
        for model in plan.models:
            pointer_member = f"{model.prefix}/{POINTER_NAME}"
            if pointer_member in self.small:
                replace_file(plan.stores[model.name].pointer_path, self.small[pointer_member])


def _write_key(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, key, KEY_MODE)


def restore(
    source: IO[bytes],
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
    default_model: str,
    force: bool = False,
    only: str | None = None,
    log: Log = stderr,
) -> dict[str, Any]:
    """Restore an archive read from ``source`` (a stream is fine); returns its manifest.

    ``default_model``: MODEL_NAME, the name a format 1 archive's store is restored under.
    ``only``: "models" (every model's versions and pointer, the signing key) or "datasets"; None: both.
    """
    parts = {"models", "datasets"} if only is None else {only}
    if not parts <= {"models", "datasets"}:
        raise ValueError(f"only must be 'models' or 'datasets', not {only!r}")
    run = _Restore(ModelRegistry(Path(model_dir), None, default_model), Path(dataset_dir), parts, force)
    try:
        run.stage(source)
        manifest, archived = run.verify()
        plan = run.plan(manifest, archived, signing_key_file)
        summary = run.apply(plan, signing_key_file, log)
    finally:
        run.staging.cleanup()

    current = "; ".join(f"{m.name} {m.pointer['version']}" for m in plan.models if m.pointer)
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
