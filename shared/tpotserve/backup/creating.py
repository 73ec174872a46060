"""Writing an archive (:func:`create`, to a stream; :func:`create_file`, to a new file).

The copying itself, and why it is consistent while the stack runs: :mod:`.snapshot`. A backup
file is written under a temp name beside the target (mode 0600: it may hold the signing key)
and renamed when complete.
"""

from __future__ import annotations

import json
import secrets
import tarfile
from pathlib import Path
from typing import IO, Any

from ..atomic import TMP_PREFIX, replacing
from ..clock import utc_iso
from ..registry import ModelRegistry
from ..store import POINTER_NAME
from .common import BackupError, Log, plain_entries, stderr
from .format import FORMAT, FORMAT_VERSION, KEY_MEMBER, KEY_MODE, MANIFEST_NAME, model_prefix
from .snapshot import ArchiveWriter, ModelCopy, copy_dataset, copy_model


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("tpotserve")
    except Exception:  # noqa: BLE001 - only informative
        return "unknown"


def create(
    out: IO[bytes],
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
    default_model: str,
    log: Log = stderr,
) -> dict[str, Any]:
    """Write a backup archive (gzip tar) of every model and data set to ``out``; returns its manifest.

    ``default_model``: MODEL_NAME, the name a single-model volume's store is archived under.
    """
    registry = ModelRegistry(Path(model_dir), None, default_model)
    notes: list[str] = []
    models: list[ModelCopy] = []

    with tarfile.open(fileobj=out, mode="w|gz") as tar:
        writer = ArchiveWriter(tar)

        # 1. Every model, one after the other (the default first).
        for name in registry.names():
            models.append(copy_model(writer, registry, name))
            notes += models[-1].notes

        # 2. The uploaded data sets.
        datasets = _copy_datasets(writer, Path(dataset_dir), notes)

        # 3. The native run's signing key, when asked for and present.
        key_included = _copy_key(writer, signing_key_file, notes)

        # 4. The side files and pointers as captured, then the manifest that describes everything.
        _add_pointers(writer, models)
        manifest = _manifest(registry, models, datasets, key_included, notes, writer.files)
        writer.add_bytes(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode())

    for note in notes:
        log(f"note: {note}")
    log(_summary(models, datasets, key_included))
    return manifest


def _copy_datasets(writer: ArchiveWriter, dataset_root: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Every complete data set into the archive; one that vanished or is incomplete is a note."""
    datasets: list[dict[str, Any]] = []
    for dataset_id in plain_entries(dataset_root):
        entry, why = copy_dataset(writer, dataset_root, dataset_id)
        if entry is None:
            notes.append(f"data set {dataset_id!r} left out: {why}")
        else:
            datasets.append(entry)
    return datasets


def _copy_key(writer: ArchiveWriter, signing_key_file: Path | None, notes: list[str]) -> bool:
    """The signing key into the archive (mode 0600) when asked for; whether it was there."""
    if signing_key_file is None:
        return False
    try:
        with open(signing_key_file, "rb") as handle:
            key = handle.read()
    except FileNotFoundError:
        notes.append(f"no signing key at {signing_key_file}: not included")
        return False
    writer.add_bytes(KEY_MEMBER, key, mode=KEY_MODE)
    return True


def _add_pointers(writer: ArchiveWriter, models: list[ModelCopy]) -> None:
    """Every model's side files, then every pointer, as each model's copy captured them."""
    for model in models:
        for name, raw in model.side.items():
            writer.add_bytes(f"{model_prefix(model.name)}/{name}", raw)
    for model in models:
        if model.pointer_raw is not None:
            writer.add_bytes(f"{model_prefix(model.name)}/{POINTER_NAME}", model.pointer_raw)


def _manifest(
    registry: ModelRegistry, models: list[ModelCopy], datasets: list[dict[str, Any]], key_included: bool,
    notes: list[str], files: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The manifest: what the archive holds, every file with its sha256 (the manifest itself aside)."""
    return {
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
        "files": dict(sorted(files.items())),
    }


def _summary(models: list[ModelCopy], datasets: list[dict[str, Any]], key_included: bool) -> str:
    described = "; ".join(
        f"model {m.name}: {len(m.versions)} version(s), "
        + (f"current {m.pointer['version']}" if m.pointer else "no current version")
        for m in models
    ) or "no models"
    return (
        f"backup: {described}; {len(datasets)} data set(s), "
        f"signing key {'included' if key_included else 'not included'}"
    )


def create_file(
    target: Path,
    model_dir: Path,
    dataset_dir: Path,
    signing_key_file: Path | None = None,
    *,
    default_model: str,
    log: Log = stderr,
) -> dict[str, Any]:
    """Write the archive to ``target`` atomically (temp name beside it, then rename), mode 0600."""
    target = Path(target)
    if target.exists():
        raise BackupError(f"{target} already exists; a backup never overwrites another")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp name keeps the archive's name in front (.<name>.tmp-<random>, docs/operations.md).
    tmp = target.parent / f".{target.name}{TMP_PREFIX}{secrets.token_hex(4)}"
    with replacing(target, KEY_MODE, tmp=tmp) as handle:
        manifest = create(handle, model_dir, dataset_dir, signing_key_file, default_model=default_model, log=log)
    log(f"wrote {target} ({target.stat().st_size} bytes)")
    return manifest
