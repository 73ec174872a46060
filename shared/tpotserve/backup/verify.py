"""Checking an archive before anything is restored: each member's name and kind as it is read,
then every file against the manifest and every artifact against its metadata and its pointer.

It accepts only the member names of :mod:`.format` (or format 1's; side files only since
format 3, compiled.json since format 4) as regular files (checked with tarfile's ``data`` filter too), with model names that
:func:`tpotserve.registry.check_model_name` accepts.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..names import DATASET_DATA_NAME, DATASET_META_NAME
from ..registry import check_model_name
from ..store import ARTIFACT_NAME, META_NAME, POINTER_NAME, SIDECAR_NAME
from .common import RestoreError
from .format import (
    FORMAT,
    MANIFEST_NAME,
    MEMBER,
    READABLE_VERSIONS,
    SIDE_FILES,
    SIDE_FILES_SINCE,
    SIDECAR_SINCE,
    model_prefix,
)


def check_member(member: tarfile.TarInfo, dest: Path) -> re.Match[str]:
    """The member's parsed name; RestoreError for anything but a known name as a regular file."""
    data_filter = getattr(tarfile, "data_filter", None)  # Python >= 3.11.4; the checks below suffice alone
    if data_filter is not None:
        try:
            data_filter(member, str(dest))  # absolute paths, '..', links out, devices...
        except tarfile.FilterError as exc:
            raise RestoreError(f"archive member {member.name!r} is refused: {exc}") from exc
    match = MEMBER.fullmatch(member.name)
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



def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise RestoreError(f"{what} is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class Archived:
    """One model of an archive, verified."""

    name: str
    """Its name on the volume: format 1's single store is the default model."""
    member_name: str | None
    """Its name in the archive's member names; None for format 1."""
    pointer: dict[str, Any] | None
    versions: dict[str, str]
    """{version: sha256}, in the manifest's order."""
    side: tuple[str, ...] = ()
    """The side files the archive holds of it (format 3 and later)."""

    @property
    def prefix(self) -> str:
        return model_prefix(self.member_name)


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


def verify_archive(
    manifest: Any, received: dict[str, dict[str, Any]], small: dict[str, bytes], default_model: str
) -> list[Archived]:
    """Every file against the manifest, and every artifact against its metadata and its model's
    pointer; returns the archive's models."""
    _check_format(manifest)
    _check_files(manifest, received)
    listed = _manifest_models(manifest, default_model)
    members = [(name, MEMBER.fullmatch(name)) for name in received]
    in_archive = _versions_in_archive(manifest, listed, members)
    archived = [
        _archived_model(member_name, name, entry, in_archive, received, small)
        for member_name, (name, entry) in listed.items()
    ]
    _check_datasets(manifest, members, received, small)
    return archived


def _check_format(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RestoreError(f"{MANIFEST_NAME} does not describe a {FORMAT} archive")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise RestoreError(
            f"archive format version {manifest.get('format_version')!r}; "
            f"this tpotserve reads "
            f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}"
        )


def _check_files(manifest: dict[str, Any], received: dict[str, dict[str, Any]]) -> None:
    """The archive's members are the manifest's files, each with its sha256 and size."""
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


def _versions_in_archive(
    manifest: dict[str, Any], listed: dict[str | None, tuple[str, dict[str, Any]]],
    members: list[tuple[str, re.Match[str] | None]],
) -> dict[str | None, set[str]]:
    """{model's name in member names: the versions the archive holds files of}; every model
    member belongs to a model the manifest lists, side files only since format 3, compiled.json since 4."""
    in_archive: dict[str | None, set[str]] = {}
    for name, match in members:
        if match and (match["version"] or match["pointer"] or match["side"]):
            if match["model"] not in listed:
                raise RestoreError(
                    f"archive member {name!r} belongs to no model its manifest lists "
                    f"(a format {manifest['format_version']} archive)"
                )
            if (match["side"] and manifest["format_version"] < SIDE_FILES_SINCE) or (
                match["vfile"] == SIDECAR_NAME and manifest["format_version"] < SIDECAR_SINCE
            ):
                raise RestoreError(
                    f"archive member {name!r} is not in a format {manifest['format_version']} archive"
                )
            if match["version"]:
                in_archive.setdefault(match["model"], set()).add(match["version"])
    return in_archive


def _archived_model(
    member_name: str | None, name: str, entry: dict[str, Any], in_archive: dict[str | None, set[str]],
    received: dict[str, dict[str, Any]], small: dict[str, bytes],
) -> Archived:
    """One model of the manifest, checked: its versions are whole and its pointer names one."""
    prefix = model_prefix(member_name)
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
        pointer = parse_json(small[pointer_member], pointer_member)
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
    return Archived(name, member_name, entry.get("pointer"), versions, side)


def _check_datasets(
    manifest: dict[str, Any], members: list[tuple[str, re.Match[str] | None]],
    received: dict[str, dict[str, Any]], small: dict[str, bytes],
) -> None:
    datasets = set(
        _listed(
            manifest.get("datasets"), "id", "datasets", DATASET_DATA_NAME, DATASET_META_NAME, received, small,
            "data set",
        )
    )
    if {m["dataset"] for _name, m in members if m and m["dataset"]} != datasets:
        raise RestoreError("the archive's data set files do not match the manifest's list of data sets")


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
        meta = parse_json(small[meta_member], meta_member)
        if not (meta.get("sha256") == entry["sha256"] == received[data]["sha256"]):
            raise RestoreError(f"{what} {name!r}: {data_name}'s sha256 does not match its metadata")
        found[name] = entry["sha256"]
    return found
