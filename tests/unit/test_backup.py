"""Unit tests for tpotserve.backup: archives of the model store and the data sets, and restores.

Real stores on a temp directory, real tar files; the only interference is at
the copy step (``_open_for_copy``), where a real ``ModelStore.prune`` runs as
if retention ran while the backup was copying.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tpotserve import backup
from tpotserve import datasets as datasets_module
from tpotserve.backup import BackupError, RestoreError
from tpotserve.datasets import DataLimits, DatasetStore
from tpotserve.store import ModelStore, Pointer

REPO = Path(__file__).resolve().parents[2]
KEY = b"unit-test-signing-key"
LIMITS = DataLimits(max_rows=1000, max_columns=20, min_rows=1, holdout_fraction=0.2)
CSV = b"x,y,label\n1,2,a\n3,4,b\n5,6,a\n"


def _dump(data: bytes):
    def dump(path: Path) -> None:
        path.write_bytes(data)

    return dump


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dirs(root: Path) -> tuple[Path, Path, Path]:
    return root / "models", root / "datasets", root / "signing.key"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A data dir with versions v1..v3 (current v3, previous v2), one upload and a signing key."""
    root = tmp_path / "source"
    models, datasets, key = _dirs(root)
    store = ModelStore(models, KEY)
    for name in ("v1", "v2", "v3"):
        store.write_version(name, _dump(f"model {name} ".encode() * 500), {"task": "classification"})
    store.set_current("v2")
    store.set_current("v3")
    DatasetStore(datasets, LIMITS).save(CSV, "small.csv")
    key.write_bytes(KEY)
    key.chmod(0o600)
    return root


def _backup(root: Path, target: Path, with_key: bool = True) -> dict:
    models, datasets, key = _dirs(root)
    return backup.create_file(target, models, datasets, key if with_key else None, log=lambda _m: None)


def _restore(archive: Path, root: Path, **kwargs) -> dict:
    models, datasets, key = _dirs(root)
    return backup.restore_file(archive, models, datasets, key, log=lambda _m: None, **kwargs)


def _members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rewrite(archive: Path, target: Path, change) -> None:
    """Copy ``archive`` to ``target`` member by member; ``change(info, data)`` returns new bytes."""
    with tarfile.open(archive) as src, tarfile.open(target, "w:gz") as out:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            new = change(info, data)
            info.size = len(new)
            out.addfile(info, io.BytesIO(new))


def _assert_nothing_restored(root: Path) -> None:
    models, datasets, key = _dirs(root)
    assert not (models / "current.json").exists()
    leftovers = [p for p in root.rglob("*") if p.is_file()]
    assert leftovers == [], f"a refused restore wrote {leftovers}"


# --- round trip ------------------------------------------------------------------
def test_round_trip_restores_every_version_the_pointer_the_data_sets_and_the_key(
    source: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "backups" / "b.tar.gz"
    manifest = _backup(source, archive)

    assert _mode(archive) == 0o600  # it holds the signing key
    assert [p.name for p in archive.parent.iterdir()] == ["b.tar.gz"]  # no temp file left beside it
    names = _members(archive)
    assert names[-2:] == ["models/current.json", "manifest.json"]
    assert {v["version"] for v in manifest["versions"]} == {"v1", "v2", "v3"}
    assert manifest["pointer"]["version"] == "v3" and manifest["pointer"]["previous"] == "v2"
    upload_id = DatasetStore(source / "datasets", LIMITS).list()[1]["id"]
    assert [d["id"] for d in manifest["datasets"]] == [upload_id]
    assert manifest["signing_key"] is True and manifest["notes"] == []
    assert manifest["format"] == "tpotserve-backup" and manifest["format_version"] == 1

    target = tmp_path / "restored"
    _restore(archive, target)

    assert _tree(target) == _tree(source)  # byte for byte: versions, metadata, pointer, uploads, key
    restored = ModelStore(target / "models", KEY)
    pointer = restored.read_pointer()
    assert pointer == ModelStore(source / "models").read_pointer()
    # The restored store serves: hash and signature check out with the restored key.
    assert restored.verified_artifact(pointer.version, pointer.sha256).exists()
    upload = DatasetStore(target / "datasets", LIMITS).list()[1]
    assert len(DatasetStore(target / "datasets", LIMITS).frame(upload["id"])) == 3
    assert _mode(target / "signing.key") == 0o600
    assert _mode(target / "models" / "versions" / "v1" / "model.joblib") == 0o644
    assert not [p for p in target.rglob(".*")]  # no staging directory left


def test_an_empty_store_round_trips_without_a_pointer(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    empty = tmp_path / "none"
    manifest = backup.create_file(archive, empty / "models", empty / "datasets", log=print)
    assert manifest["pointer"] is None and manifest["versions"] == [] and manifest["datasets"] == []
    _restore(archive, tmp_path / "target")
    assert not (tmp_path / "target" / "models" / "current.json").exists()


def test_without_a_key_file_the_key_is_neither_archived_nor_restored(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(source, archive, with_key=False)
    assert manifest["signing_key"] is False and "signing.key" not in _members(archive)
    target = tmp_path / "restored"
    _restore(archive, target)
    assert not (target / "signing.key").exists()
    assert (target / "models" / "current.json").exists()


def test_a_missing_key_file_is_a_note_not_an_error(source: Path, tmp_path: Path) -> None:
    (source / "signing.key").unlink()
    manifest = _backup(source, tmp_path / "b.tar.gz")
    assert manifest["signing_key"] is False
    assert any("no signing key" in note for note in manifest["notes"])


# --- consistency while the stack writes ---------------------------------------------
def test_temp_dirs_and_half_written_versions_are_never_captured(source: Path, tmp_path: Path) -> None:
    models = source / "models"
    # A trainer mid-write, a pointer mid-replace, a dead writer's leftover, a hand-made
    # directory without metadata, an upload mid-write: none of them is a complete entry.
    # A trainer that wrote both files and is about to rename its temp directory: complete
    # content under a temp name, still not a version.
    shutil.copytree(models / "versions" / "v1", models / "versions" / ".tmp-v4-0a1b2c3d")
    (models / ".tmp-current.json-0a1b2c3d").write_text('{"version": "v4"')
    # Retention mid-delete: renamed aside, not yet removed.
    shutil.copytree(models / "versions" / "v2", models / "versions" / ".tmp-deleted-v0")
    (models / "versions" / "v-incomplete").mkdir()
    (models / "versions" / "v-incomplete" / "model.joblib").write_bytes(b"no meta")
    (source / "datasets" / ".tmp-ds-123-0a1b2c3d").mkdir()
    (source / "datasets" / ".tmp-ds-123-0a1b2c3d" / "data.csv").write_bytes(b"a,b\n")

    archive = tmp_path / "b.tar.gz"
    manifest = _backup(source, archive)

    names = _members(archive)
    assert not [n for n in names if ".tmp" in n or "incomplete" in n]
    assert {v["version"] for v in manifest["versions"]} == {"v1", "v2", "v3"}
    assert any("'v-incomplete' left out" in note and "meta.json" in note for note in manifest["notes"])
    assert not [note for note in manifest["notes"] if ".tmp" in note]  # temp entries are not even looked at


@pytest.mark.parametrize("interrupted_file", ["meta.json", "model.joblib"])
def test_a_version_deleted_by_retention_during_the_backup_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted_file: str
) -> None:
    root = tmp_path / "source"
    store = ModelStore(root / "models", KEY)
    for name in ("v1", "v2", "v3", "v4"):
        store.write_version(name, _dump(name.encode() * 100), {})
    store.set_current("v3")
    store.set_current("v4")  # current v4, previous v3: protected; v1, v2 prunable

    real_open = backup._open_for_copy
    pruned: list[str] = []

    def open_while_retention_runs(path: Path):
        if path.parent.name == "v1" and path.name == interrupted_file and not pruned:
            pruned.extend(store.prune(keep=2))  # the real retention, right now
        return real_open(path)

    monkeypatch.setattr(backup, "_open_for_copy", open_while_retention_runs)
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(root, archive)

    assert pruned == ["v1", "v2"]
    assert [v["version"] for v in manifest["versions"]] == ["v3", "v4"]
    assert manifest["pointer"]["version"] == "v4"
    assert sum("deleted by retention" in note for note in manifest["notes"]) == 2
    assert not [n for n in _members(archive) if "/v1/" in n or "/v2/" in n]
    target = tmp_path / "restored"
    _restore(archive, target)
    assert ModelStore(target / "models", KEY).read_pointer().version == "v4"


def test_when_the_pointers_version_is_deleted_during_the_backup_it_follows_the_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "source"
    store = ModelStore(root / "models", KEY)
    store.write_version("v1", _dump(b"1" * 100), {})
    store.write_version("v2", _dump(b"2" * 100), {})
    store.set_current("v1")
    store.set_current("v2")  # the backup reads this pointer: v2, previous v1

    real_open = backup._open_for_copy
    published: list[str] = []

    def open_while_two_trainings_publish(path: Path):
        if path.parent.name == "v2" and path.name == "model.joblib" and not published:
            # Two trainings publish and retention runs: v1 and v2 are no longer protected.
            for name in ("v3", "v4"):
                store.write_version(name, _dump(name.encode() * 100), {})
                store.set_current(name)
                published.append(name)
            assert store.prune(keep=2) == ["v1", "v2"]
        return real_open(path)

    monkeypatch.setattr(backup, "_open_for_copy", open_while_two_trainings_publish)
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(root, archive)

    assert published == ["v3", "v4"]
    assert manifest["pointer"]["version"] == "v4" and manifest["pointer"]["previous"] == "v3"
    assert [v["version"] for v in manifest["versions"]] == ["v3", "v4"]
    target = tmp_path / "restored"
    _restore(archive, target)
    restored = ModelStore(target / "models", KEY)
    assert restored.read_pointer() == Pointer("v4", restored.read_meta("v4")["sha256"], previous="v3")


def test_a_pointer_naming_a_missing_version_fails_the_backup(source: Path, tmp_path: Path) -> None:
    shutil.rmtree(source / "models" / "versions" / "v3")  # deleted by hand
    archive = tmp_path / "out" / "b.tar.gz"
    with pytest.raises(BackupError, match="current version 'v3'"):
        _backup(source, archive)
    assert list(archive.parent.iterdir()) == []  # neither the archive nor its temp file


@pytest.mark.parametrize(
    "what, corrupt",
    [
        ("model version 'v1'", lambda root: _flip_byte(root / "models" / "versions" / "v1" / "model.joblib")),
        ("model version 'v3'", lambda root: _truncate(root / "models" / "versions" / "v3" / "model.joblib")),
        ("data set", lambda root: _flip_byte(next((root / "datasets").glob("ds-*/data.csv")))),
    ],
)
def test_a_corrupt_artifact_fails_the_backup_loudly(source: Path, tmp_path: Path, what: str, corrupt) -> None:
    corrupt(source)
    archive = tmp_path / "out" / "b.tar.gz"
    with pytest.raises(BackupError, match=rf"{what}.*sha256.*no backup was made"):
        _backup(source, archive)
    assert list(archive.parent.iterdir()) == []


def test_a_failed_backup_to_stdout_exits_non_zero(source: Path, tmp_path: Path) -> None:
    _flip_byte(source / "models" / "versions" / "v2" / "model.joblib")
    result = _cli("create", "-", "--data-dir", str(source))
    assert result.returncode == 1
    assert b"create failed: model version 'v2'" in result.stderr
    # What did reach stdout is no archive a restore would take.
    (tmp_path / "partial.tar.gz").write_bytes(result.stdout)
    with pytest.raises(RestoreError):
        _restore(tmp_path / "partial.tar.gz", tmp_path / "target")
    _assert_nothing_restored(tmp_path / "target")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


# --- restore: refusals ---------------------------------------------------------------
def test_restore_refuses_a_model_dir_that_holds_a_store(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    target = tmp_path / "target"
    other = ModelStore(target / "models", KEY)
    other.write_version("other", _dump(b"other"), {})  # a version, even without a pointer

    with pytest.raises(RestoreError, match="already holds a model store.*--force"):
        _restore(archive, target)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not even gzip")
    with pytest.raises(RestoreError, match="already holds a model store"):
        _restore(garbage, target)  # refused before a byte of the archive is read
    assert sorted(p.name for p in (target / "models" / "versions").iterdir()) == ["other"]
    assert not (target / "models" / "current.json").exists()

    # --force: the archive's versions join the store and its pointer becomes current.
    _restore(archive, target, force=True)
    assert other.read_pointer().version == "v3"
    assert {m["version"] for m in other.list_versions()} == {"other", "v1", "v2", "v3"}


def test_restore_refuses_a_store_with_only_a_pointer(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    target = tmp_path / "target"
    (target / "models").mkdir(parents=True)
    (target / "models" / "current.json").write_text('{"version": "x", "sha256": "y"}')
    with pytest.raises(RestoreError, match="current.json"):
        _restore(archive, target)


def test_restore_refuses_to_replace_another_signing_key(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    target = tmp_path / "target"
    target.mkdir()
    (target / "signing.key").write_bytes(b"another key")
    with pytest.raises(RestoreError, match="another signing key"):
        _restore(archive, target)
    assert (target / "signing.key").read_bytes() == b"another key"
    assert not (target / "models" / "current.json").exists()


def test_restore_refuses_a_data_set_id_that_holds_other_bytes_before_writing_anything(
    source: Path, tmp_path: Path
) -> None:
    DatasetStore(source / "datasets", LIMITS).save(b"p,q\n7,8\n9,10\n", "second.csv")
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(source, archive)
    first, dataset_id = [d["id"] for d in manifest["datasets"]]  # the clash is on the second one
    target = tmp_path / "target"
    clash = target / "datasets" / dataset_id
    clash.mkdir(parents=True)
    (clash / "data.csv").write_bytes(b"other,bytes\n1,2\n")
    (clash / "meta.json").write_text("{}")
    with pytest.raises(RestoreError, match=f"data set '{dataset_id}' already exists with other content"):
        _restore(archive, target)
    assert not (target / "models" / "current.json").exists()
    assert not (target / "models" / "versions").exists() or not list((target / "models" / "versions").iterdir())
    assert (clash / "data.csv").read_bytes() == b"other,bytes\n1,2\n"
    assert not (target / "datasets" / first).exists()  # refused as a whole, not halfway
    # An identical data set already there is simply kept.
    shutil.rmtree(clash)
    _restore(archive, target, only="datasets")
    _restore(archive, target)
    assert _tree(target) == _tree(source)


def test_restore_rejects_a_tampered_artifact(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    tampered = tmp_path / "tampered.tar.gz"

    def swap_bytes(info: tarfile.TarInfo, data: bytes) -> bytes:
        return data.replace(b"model v2", b"model X2") if info.name.endswith("v2/model.joblib") else data

    _rewrite(archive, tampered, swap_bytes)
    target = tmp_path / "target"
    with pytest.raises(RestoreError, match="models/versions/v2/model.joblib.*tampered"):
        _restore(tampered, target)
    _assert_nothing_restored(target)


def test_restore_rejects_an_artifact_whose_manifest_was_tampered_along(source: Path, tmp_path: Path) -> None:
    """Even with the manifest rewritten to match, the artifact must match its own metadata."""
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    tampered = tmp_path / "tampered.tar.gz"
    evil = b"a pickle someone planted" * 10

    def replace_and_cover(info: tarfile.TarInfo, data: bytes) -> bytes:
        if info.name.endswith("v1/model.joblib"):
            return evil
        if info.name == "manifest.json":
            manifest = json.loads(data)
            import hashlib

            manifest["files"]["models/versions/v1/model.joblib"] = {
                "sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)
            }
            return json.dumps(manifest).encode()
        return data

    _rewrite(archive, tampered, replace_and_cover)
    target = tmp_path / "target"
    with pytest.raises(RestoreError, match="'v1'.*does not match its metadata"):
        _restore(tampered, target)
    _assert_nothing_restored(target)


def _tar_with(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


@pytest.mark.parametrize(
    "member",
    [
        _info("../escaped"),
        _info("/tmp/tpotserve-absolute-escape"),
        _info("models/versions/../../escaped"),
        _info("models/versions/v1/../../../escaped"),
        _info("models/versions/v1/model.joblib", tarfile.SYMTYPE, "/etc/passwd"),
        _info("models/versions/v1/model.joblib", tarfile.SYMTYPE, "meta.json"),  # a link that stays inside
        _info("models/versions/v1/model.joblib", tarfile.LNKTYPE, "../../../escaped"),
        _info("models/versions/v1/model.joblib", tarfile.FIFOTYPE),
        _info("models/versions/v1/model.joblib", tarfile.CHRTYPE),
        _info("models/versions/v1"),
        _info("models/versions/.tmp-v1-00000000/model.joblib"),
        _info("somewhere/else.txt"),
    ],
    ids=lambda m: f"{m.name}:{m.type!r}",
)
def test_restore_rejects_path_traversal_links_and_devices(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = _tar_with(tmp_path / "evil.tar.gz", (member, b"payload"))
    target = tmp_path / "deep" / "target"
    with pytest.raises(RestoreError, match="is refused"):
        _restore(archive, target)
    _assert_nothing_restored(target)
    assert not (tmp_path / "deep" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/tpotserve-absolute-escape").exists()


def test_restore_rejects_a_member_the_manifest_does_not_list(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    extended = tmp_path / "extended.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(extended, "w:gz") as out:
        for info in src.getmembers():
            if info.name == "manifest.json":
                extra = _info("models/versions/v9/model.joblib")
                extra.size = 5
                out.addfile(extra, io.BytesIO(b"extra"))
            out.addfile(info, src.extractfile(info))
    target = tmp_path / "target"
    with pytest.raises(RestoreError, match="'models/versions/v9/model.joblib' is not in the manifest"):
        _restore(extended, target)
    _assert_nothing_restored(target)


@pytest.mark.parametrize("keep_fraction", [0.3, 0.9])
def test_restore_rejects_a_truncated_archive(source: Path, tmp_path: Path, keep_fraction: float) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    cut = tmp_path / "cut.tar.gz"
    data = archive.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep_fraction)])
    target = tmp_path / "target"
    with pytest.raises(RestoreError, match="cut short"):
        _restore(cut, target)
    _assert_nothing_restored(target)


def test_restore_rejects_a_file_that_is_no_archive(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("not a backup")
    with pytest.raises(RestoreError, match="not a gzip tar"):
        _restore(plain, tmp_path / "target")
    no_manifest = _tar_with(tmp_path / "bare.tar.gz", (_info("models/current.json"), b"{}"))
    with pytest.raises(RestoreError, match="no manifest.json"):
        _restore(no_manifest, tmp_path / "target")
    _assert_nothing_restored(tmp_path / "target")


# --- restore: the pointer comes last ----------------------------------------------------
def test_an_archive_whose_last_artifact_is_corrupt_leaves_no_pointer(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    artifacts = [n for n in _members(archive) if n.endswith("model.joblib")]
    last = artifacts[-1]
    corrupt = tmp_path / "corrupt.tar.gz"
    _rewrite(archive, corrupt, lambda info, data: data[:-1] + b"!" if info.name == last else data)
    target = tmp_path / "target"
    with pytest.raises(RestoreError, match=last):
        _restore(corrupt, target)
    _assert_nothing_restored(target)


def test_a_restore_that_fails_while_renaming_versions_into_place_writes_no_pointer(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    target = tmp_path / "target"
    real_rename = os.rename

    def rename_until_the_disk_fails(src, dst):
        if Path(dst).name == "v3" and Path(dst).parent.name == "versions":
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(backup.os, "rename", rename_until_the_disk_fails)
    with pytest.raises(OSError, match="Input/output"):
        _restore(archive, target)
    monkeypatch.undo()
    models = target / "models"
    assert (models / "versions" / "v1").is_dir()  # versions went in before the failure...
    assert not (models / "current.json").exists()  # ...but the pointer comes only after all of them
    assert not [p for p in models.iterdir() if p.name.startswith(".restore-")]  # staging removed


# --- parts, streams and the command line ---------------------------------------------------
def test_restore_only_models_or_only_datasets(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    target = tmp_path / "target"
    _restore(archive, target, only="datasets")
    assert list((target / "datasets").glob("ds-*/data.csv"))
    assert not (target / "models").exists() and not (target / "signing.key").exists()
    _restore(archive, target, only="models")
    assert _tree(target) == _tree(source)


def _cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tpotserve.backup", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_the_cli_streams_through_stdout_and_stdin_with_dirs_from_the_settings(
    source: Path, tmp_path: Path
) -> None:
    # As in compose: MODEL_DIR and DATASET_DIR from the environment, the archive through a pipe.
    source_env = {"MODEL_DIR": str(source / "models"), "DATASET_DIR": str(source / "datasets")}
    created = _cli("create", "-", env=source_env)
    assert created.returncode == 0, created.stderr.decode()
    assert gzip.decompress(created.stdout)  # a complete gzip stream
    assert b"3 model version(s), current v3, 1 data set(s)" in created.stderr

    target = tmp_path / "target"
    env = {"MODEL_DIR": str(target / "models"), "DATASET_DIR": str(target / "datasets")}
    restored = _cli("restore", "-", stdin=created.stdout, env=env)
    assert restored.returncode == 0, restored.stderr.decode()
    assert ModelStore(target / "models").read_pointer().version == "v3"
    assert _tree(target / "models") == _tree(source / "models")

    again = _cli("restore", "-", stdin=created.stdout, env=env)
    assert again.returncode == 1 and b"already holds a model store" in again.stderr


def test_the_store_file_names_are_the_stores_own() -> None:
    assert backup.DATASET_DATA_NAME == datasets_module.DATA_NAME
    assert backup.DATASET_META_NAME == datasets_module.META_NAME


def _backup_argv(line: str) -> list[str]:
    """The module's arguments in a documented shell line, without redirections: what follows
    `-m tpotserve.backup`, or the compose `backup` service (whose entrypoint is the module)."""
    words = shlex.split(line, comments=True)
    if "tpotserve.backup" in words:
        args = words[words.index("tpotserve.backup") + 1 :]
    else:
        assert words[:3] == ["docker", "compose", "run"], line
        args = words[words.index("backup") + 1 :]
    out: list[str] = []
    skip = False
    for word in args:
        if skip:
            skip = False
        elif word == "|":
            break
        elif word in ("<", ">"):
            skip = True
        else:
            out.append(word)
    return out


def _compose_services() -> dict:
    import yaml

    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def test_every_backup_command_in_the_docs_parses() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    section = docs.split("## Backups", 1)[1].split("\n## ", 1)[0]
    lines, in_code = [], False
    for line in section.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif in_code and ("-m tpotserve.backup" in line or "docker compose run" in line):
            lines.append(line)
    # Inline commands too: `docker compose ...` in backquotes outside the code blocks.
    lines += [cmd for cmd in re.findall(r"`(docker compose [^`]+)`", section) if "backup" in cmd]
    assert sum("docker compose" in line for line in lines) >= 3, lines
    assert sum("docker compose" not in line for line in lines) >= 4, lines
    parser = backup.build_parser()
    for line in lines:
        args = parser.parse_args(_backup_argv(line))
        assert args.command in ("create", "restore"), line
        if "docker compose" in line:
            assert args.archive == "-", line  # compose streams through the container's stdin/stdout


def test_the_compose_backup_service_the_docs_use_runs_this_module_with_both_volumes_writable() -> None:
    service = _compose_services()["backup"]
    assert service["entrypoint"] == ["python", "-m", "tpotserve.backup"]
    assert {"models:/models", "datasets:/datasets"} <= set(service["volumes"])  # not :ro
    assert service["environment"]["MODEL_DIR"] == "/models"
    assert service["environment"]["DATASET_DIR"] == "/datasets"
    assert "tools" in service["profiles"]  # never started by `docker compose up`
    # The exec form in the docs goes through the worker, which has the model volume.
    assert "models:/models" in _compose_services()["worker"]["volumes"]


def test_make_backup_and_restore_run_this_module_on_the_native_data_dir(tmp_path: Path) -> None:
    dry = subprocess.run(
        ["make", "-n", "-o", "setup", "backup", "DATA_DIR=/srv/tpot", "BACKUP_DIR=/srv/backups"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    (line,) = [l for l in dry.stdout.splitlines() if "tpotserve.backup" in l]
    args = backup.build_parser().parse_args(_backup_argv(line))
    assert args.command == "create" and args.data_dir == Path("/srv/tpot")
    assert args.archive.startswith("/srv/backups/tpotserve-") and args.archive.endswith(".tar.gz")

    usage = subprocess.run(
        ["make", "-o", "setup", "restore"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert usage.returncode != 0 and "usage: make restore BACKUP=" in usage.stderr


def test_the_docs_quote_the_makefile_recipes_exactly() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    recipes = [line.strip() for line in (REPO / "Makefile").read_text().splitlines()
               if line.startswith("\t") and "-m tpotserve.backup" in line]
    assert len(recipes) == 2, recipes  # backup and restore
    for recipe in recipes:
        quoted = recipe.replace("$(PY)", ".venv/bin/python").replace("$(BACKUP_TIME)", "<UTC time>")
        assert f"`{quoted}`" in docs.replace("\n", " "), quoted
