"""Unit tests for tpotserve.backup: archives of every named model and the data sets, and restores.

Real stores on a temp directory, real tar files; the only interference is at
the copy step (``_open_for_copy``), where a real ``ModelStore.prune`` (or the
trainer's ``ModelRegistry.migrate_legacy``) runs as if it ran while the backup
was copying.
"""

from __future__ import annotations

import gzip
import hashlib
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
from tpotserve.backup import BackupError, RestoreError, restoring, snapshot
from tpotserve.backup import format as backup_format
from tpotserve.datasets import DataLimits, DatasetStore
from tpotserve.registry import ModelRegistry
from tpotserve.store import ModelStore, Pointer

REPO = Path(__file__).resolve().parents[2]
KEY = b"unit-test-signing-key"
LIMITS = DataLimits(max_rows=1000, max_columns=20, min_rows=1, holdout_fraction=0.2)
CSV = b"x,y,label\n1,2,a\n3,4,b\n5,6,a\n"
DEFAULT = "iris"  # MODEL_NAME's default


def _dump(data: bytes):
    def dump(path: Path) -> None:
        path.write_bytes(data)

    return dump


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dirs(root: Path) -> tuple[Path, Path, Path]:
    return root / "models", root / "datasets", root / "signing.key"


def _store(root: Path, name: str = DEFAULT) -> ModelStore:
    """Model ``name``'s store in the data dir ``root``: DIR/models/models/<name>/."""
    return ModelStore(root / "models" / "models" / name, KEY)


def _publish(store: ModelStore, *versions: str) -> ModelStore:
    for name in versions:
        store.write_version(name, _dump(f"model {name} ".encode() * 500), {"task": "classification"})
        store.set_current(name)
    return store


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A data dir whose default model has versions v1..v3 (current v3, previous v2), one upload
    and a signing key."""
    root = tmp_path / "source"
    models, datasets, key = _dirs(root)
    store = ModelRegistry(models, KEY, DEFAULT).store(DEFAULT)
    assert store.root == _store(root).root
    for name in ("v1", "v2", "v3"):
        store.write_version(name, _dump(f"model {name} ".encode() * 500), {"task": "classification"})
    store.set_current("v2")
    store.set_current("v3")
    DatasetStore(datasets, LIMITS).save(CSV, "small.csv")
    key.write_bytes(KEY)
    key.chmod(0o600)
    return root


def _backup(root: Path, target: Path, with_key: bool = True, default_model: str = DEFAULT) -> dict:
    models, datasets, key = _dirs(root)
    return backup.create_file(
        target, models, datasets, key if with_key else None, default_model=default_model, log=lambda _m: None
    )


def _restore(archive: Path, root: Path, default_model: str = DEFAULT, **kwargs) -> dict:
    models, datasets, key = _dirs(root)
    return backup.restore_file(
        archive, models, datasets, key, default_model=default_model, log=lambda _m: None, **kwargs
    )


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


def _relabeled(archive: Path, target: Path, format_version: int) -> Path:
    """``archive`` as it is, its manifest saying ``format_version`` (an older writer's number)."""

    def relabel(info: tarfile.TarInfo, data: bytes) -> bytes:
        if info.name != "manifest.json":
            return data
        return json.dumps({**json.loads(data), "format_version": format_version}).encode()

    _rewrite(archive, target, relabel)
    return target


def _assert_nothing_restored(root: Path) -> None:
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
    assert names[-2:] == ["models/models/iris/current.json", "manifest.json"]
    assert "models/models/iris/versions/v1/model.joblib" in names
    assert list(manifest["models"]) == ["iris"] and manifest["default_model"] == "iris"
    iris = manifest["models"]["iris"]
    assert {v["version"] for v in iris["versions"]} == {"v1", "v2", "v3"}
    assert iris["pointer"]["version"] == "v3" and iris["pointer"]["previous"] == "v2"
    upload_id = DatasetStore(source / "datasets", LIMITS).list()[1]["id"]
    assert [d["id"] for d in manifest["datasets"]] == [upload_id]
    assert manifest["signing_key"] is True and manifest["notes"] == []
    assert manifest["format"] == "tpotserve-backup" and manifest["format_version"] == backup_format.FORMAT_VERSION
    assert "models/models/iris/activations.jsonl" in names  # set_current logged v2 and v3

    target = tmp_path / "restored"
    _restore(archive, target)

    # Byte for byte: versions, metadata, pointer, activation log, uploads, key.
    assert _tree(target) == _tree(source)
    restored = _store(target)
    pointer = restored.read_pointer()
    assert pointer == _store(source).read_pointer()
    # The restored store serves: hash and signature check out with the restored key.
    assert restored.verified_artifact(pointer.version, pointer.sha256).exists()
    upload = DatasetStore(target / "datasets", LIMITS).list()[1]
    assert len(DatasetStore(target / "datasets", LIMITS).frame(upload["id"])) == 3
    assert _mode(target / "signing.key") == 0o600
    assert _mode(restored.versions_dir / "v1" / "model.joblib") == 0o644
    assert not [p for p in target.rglob(".*")]  # no staging directory left


def test_an_empty_store_round_trips_without_a_pointer(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    empty = tmp_path / "none"
    manifest = backup.create_file(
        archive, empty / "models", empty / "datasets", default_model=DEFAULT, log=print
    )
    assert manifest["models"] == {} and manifest["datasets"] == []
    _restore(archive, tmp_path / "target")
    assert not (tmp_path / "target" / "models").exists()


def test_without_a_key_file_the_key_is_neither_archived_nor_restored(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(source, archive, with_key=False)
    assert manifest["signing_key"] is False and "signing.key" not in _members(archive)
    target = tmp_path / "restored"
    _restore(archive, target)
    assert not (target / "signing.key").exists()
    assert _store(target).pointer_path.exists()


def test_a_missing_key_file_is_a_note_not_an_error(source: Path, tmp_path: Path) -> None:
    (source / "signing.key").unlink()
    manifest = _backup(source, tmp_path / "b.tar.gz")
    assert manifest["signing_key"] is False
    assert any("no signing key" in note for note in manifest["notes"])


# --- the side files beside each pointer ---------------------------------------------------
# Not what ModelStore.write_json writes: any bytes, restored as they were (a torn last line too).
POLICY = b'{\n "schedule": {"every_s": 3600}\n}'
SHADOW = b'{"version": "v2", "since": "2026-12-07T10:00:00Z"}'
TORN = b'{"at":"2026-12-07T10:00:01Z","version":"v3","fro'


def _with_side_files(root: Path, name: str = DEFAULT) -> ModelStore:
    store = _store(root, name)
    (store.root / "policy.json").write_bytes(POLICY)
    (store.root / "shadow.json").write_bytes(SHADOW)
    with open(store.root / "activations.jsonl", "ab") as log:
        log.write(TORN)
    return store


def test_policy_shadow_and_the_activation_log_round_trip_byte_for_byte_before_the_pointer(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_side_files(source)
    _publish(_store(source, "wine"), "w1")
    _with_side_files(source, "wine")
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    names = _members(archive)
    for model in ("iris", "wine"):
        assert {f"models/models/{model}/{name}" for name in SIDE_FILES} <= set(names)
    assert names[-3:] == [  # the pointers stay last, the manifest after them
        "models/models/iris/current.json", "models/models/wine/current.json", "manifest.json",
    ]
    with tarfile.open(archive) as tar:
        listed = json.loads(tar.extractfile("manifest.json").read())["files"]
    assert {f"models/models/iris/{name}" for name in SIDE_FILES} <= set(listed)

    written: list[str] = []
    real_replace = restoring.replace_file

    def replace_file(path: Path, data: bytes, *mode: int) -> None:
        if path.name != "signing.key":  # written the same way, before them
            written.append(f"{path.parent.name}/{path.name}")
        real_replace(path, data, *mode)

    monkeypatch.setattr(restoring, "replace_file", replace_file)
    target = tmp_path / "restored"
    _restore(archive, target)

    assert _tree(target) == _tree(source)
    restored = _store(target)
    assert (restored.root / "policy.json").read_bytes() == POLICY
    assert (restored.root / "shadow.json").read_bytes() == SHADOW
    assert (restored.root / "activations.jsonl").read_bytes().endswith(b"\n" + TORN)
    assert [a["version"] for a in restored.activations()] == ["v3", "v2"]  # the torn line skipped
    # Every side file of every model before any pointer, each pointer last.
    assert written[-2:] == ["iris/current.json", "wine/current.json"]
    assert sorted(written[:-2]) == sorted(f"{m}/{n}" for m in ("iris", "wine") for n in SIDE_FILES)
    assert _mode(restored.root / "policy.json") == 0o644
    assert not [p for p in target.rglob(".*")]  # no temp file left beside them


def test_an_archive_without_side_files_restores_and_creates_none(source: Path, tmp_path: Path) -> None:
    _with_side_files(source)
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    old = _as_format_2(archive, tmp_path / "old.tar.gz")  # as the code before side files wrote it
    assert not [n for n in _members(old) if n.rsplit("/", 1)[-1] in SIDE_FILES]

    target = tmp_path / "restored"
    assert _restore(old, target)["format_version"] == 2
    restored = _store(target)
    assert not [name for name in SIDE_FILES if (restored.root / name).exists()]
    assert _tree(target) == _without_side_files(_tree(source))
    assert restored.read_pointer().version == "v3" and restored.activations() == []

    # A store that has none (never activated since the log exists) makes an archive without them.
    bare = tmp_path / "bare"
    shutil.copytree(source, bare)
    for name in SIDE_FILES:
        (_store(bare).root / name).unlink()
    fresh = _backup_to(bare, tmp_path / "bare.tar.gz")
    with tarfile.open(fresh) as tar:
        assert json.loads(tar.extractfile("manifest.json").read())["format_version"] == backup_format.FORMAT_VERSION
    _restore(fresh, tmp_path / "restored-bare")
    assert _tree(tmp_path / "restored-bare") == _tree(bare)


def test_restore_refuses_side_files_in_an_archive_older_than_them(source: Path, tmp_path: Path) -> None:
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    relabeled = _relabeled(archive, tmp_path / "relabeled.tar.gz", 2)
    refused = "'models/models/iris/activations.jsonl' is not in a format 2 archive"
    with pytest.raises(RestoreError, match=refused):
        _restore(relabeled, tmp_path / "target")
    _assert_nothing_restored(tmp_path / "target")


def test_restore_refuses_a_store_with_only_a_policy_and_force_replaces_it(
    source: Path, tmp_path: Path
) -> None:
    _with_side_files(source)
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    target = tmp_path / "target"
    mine = _store(target)
    mine.write_json("policy.json", {"mine": True})
    with pytest.raises(RestoreError, match="model 'iris' \\(policy.json\\).*--force"):
        _restore(archive, target)
    assert mine.read_json("policy.json") == {"mine": True} and not mine.pointer_path.exists()

    _restore(archive, target, force=True)
    assert (mine.root / "policy.json").read_bytes() == POLICY
    assert mine.read_pointer().version == "v3"


def test_a_side_file_too_large_to_restore_is_left_out_with_a_note(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_side_files(source)
    limit = max(len(POLICY), len(SHADOW))  # the log is larger
    monkeypatch.setattr(snapshot, "SMALL_MEMBER_MAX_BYTES", limit)
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(source, archive)
    assert manifest["notes"] == [f"model 'iris' activations.jsonl left out: larger than {limit} bytes"]
    assert "models/models/iris/activations.jsonl" not in _members(archive)
    assert "models/models/iris/policy.json" in _members(archive)
    monkeypatch.undo()  # the restoring side's limit: the versions' meta.json are larger
    target = tmp_path / "restored"
    _restore(archive, target)
    assert _store(target).read_pointer().version == "v3"
    assert not (_store(target).root / "activations.jsonl").exists()


# --- named models, and the layouts before them ----------------------------------------
def test_two_named_models_and_the_data_sets_round_trip(source: Path, tmp_path: Path) -> None:
    _publish(_store(source, "wine"), "w1", "w2")
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(source, archive)

    assert list(manifest["models"]) == ["iris", "wine"]
    assert manifest["models"]["wine"]["pointer"]["version"] == "w2"
    assert [v["version"] for v in manifest["models"]["wine"]["versions"]] == ["w1", "w2"]
    assert _members(archive)[-3:] == [
        "models/models/iris/current.json", "models/models/wine/current.json", "manifest.json",
    ]

    target = tmp_path / "restored"
    logged: list[str] = []
    models, datasets, key = _dirs(target)
    backup.restore_file(archive, models, datasets, key, default_model=DEFAULT, log=logged.append)

    assert _tree(target) == _tree(source)
    assert "current: iris v3; wine w2" in logged[-1]
    assert ModelRegistry(models, KEY, DEFAULT).names() == ["iris", "wine"]
    for name, version in (("iris", "v3"), ("wine", "w2")):
        pointer = _store(target, name).read_pointer()
        assert pointer.version == version
        assert _store(target, name).verified_artifact(pointer.version, pointer.sha256).exists()
    assert len(DatasetStore(datasets, LIMITS).list()) == 2  # the bundled iris and the upload


SIDE_FILES = ("activations.jsonl", "policy.json", "shadow.json")


def _as_format_2(archive: Path, target: Path) -> Path:
    """An archive as the code before side files wrote it: no model's activations.jsonl,
    policy.json or shadow.json, format_version 2."""

    def side(name: str) -> bool:
        return name.startswith("models/models/") and name.rsplit("/", 1)[1] in SIDE_FILES

    with tarfile.open(archive) as src, tarfile.open(target, "w:gz") as out:
        for info in src.getmembers():
            if side(info.name):
                continue
            data = src.extractfile(info).read()
            if info.name == "manifest.json":
                manifest = json.loads(data)
                manifest.update(
                    format_version=2, files={n: e for n, e in manifest["files"].items() if not side(n)}
                )
                data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return target


def _without_side_files(tree: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in tree.items() if name.rsplit("/", 1)[-1] not in SIDE_FILES}


def _as_format_1(archive: Path, target: Path) -> Path:
    """A one-model archive as the code before named models wrote it: the store at ``models/``,
    one ``pointer`` and one ``versions`` list in the manifest, format_version 1."""

    def old_name(name: str) -> str:
        return name.replace(f"models/models/{DEFAULT}/", "models/", 1)

    with tarfile.open(_as_format_2(archive, target.with_suffix(".2.tar.gz"))) as src, \
            tarfile.open(target, "w:gz") as out:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            if info.name == "manifest.json":
                manifest = json.loads(data)
                del manifest["default_model"]
                (model,) = manifest.pop("models").values()
                manifest.update(
                    format_version=1, pointer=model["pointer"], versions=model["versions"],
                    files={old_name(name): entry for name, entry in manifest["files"].items()},
                )
                data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info.name = old_name(info.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return target


@pytest.mark.parametrize("default_model", ["iris", "flowers"])
def test_a_format_1_archive_restores_as_the_default_model(
    source: Path, tmp_path: Path, default_model: str
) -> None:
    old = _as_format_1(_backup_to(source, tmp_path / "b.tar.gz"), tmp_path / "old.tar.gz")
    names = _members(old)
    assert names[-2:] == ["models/current.json", "manifest.json"]
    assert "models/versions/v1/model.joblib" in names and not [n for n in names if "models/models" in n]
    with tarfile.open(old) as tar:
        assert set(json.loads(tar.extractfile("manifest.json").read())) == {
            "format", "format_version", "created_at", "tpotserve_version", "pointer", "versions",
            "datasets", "signing_key", "notes", "files",
        }

    target = tmp_path / "restored"
    manifest = _restore(old, target, default_model=default_model)

    assert manifest["format_version"] == 1
    restored = _store(target, default_model)
    assert _tree(restored.root) == _without_side_files(_tree(_store(source).root))
    pointer = restored.read_pointer()
    assert pointer.version == "v3" and restored.verified_artifact(pointer.version, pointer.sha256)
    assert ModelRegistry(target / "models", KEY, default_model).names() == [default_model]
    assert not (target / "models" / "versions").exists()
    assert not (target / "models" / "current.json").exists()
    assert _tree(target / "datasets") == _tree(source / "datasets")
    with pytest.raises(RestoreError, match=f"model store of model '{default_model}'"):
        _restore(old, target, default_model=default_model)  # the refusal works on old archives too


def _backup_to(root: Path, archive: Path) -> Path:
    _backup(root, archive)
    return archive


def test_restore_refuses_files_of_a_model_its_manifest_does_not_list(source: Path, tmp_path: Path) -> None:
    archive = _backup_to(source, tmp_path / "b.tar.gz")

    def manifest_change(change):
        def rewrite(info: tarfile.TarInfo, data: bytes) -> bytes:
            if info.name != "manifest.json":
                return data
            manifest = json.loads(data)
            change(manifest)
            return json.dumps(manifest).encode()

        return rewrite

    # Format 2 files under a format 1 manifest: they are no model's.
    relabeled = tmp_path / "relabeled.tar.gz"
    _rewrite(archive, relabeled, manifest_change(lambda m: m.update(format_version=1)))
    with pytest.raises(RestoreError, match="'models/models/iris/.*belongs to no model its manifest lists"):
        _restore(relabeled, tmp_path / "target")
    # A model the manifest leaves out.
    dropped = tmp_path / "dropped.tar.gz"
    _rewrite(archive, dropped, manifest_change(lambda m: m.update(models={})))
    with pytest.raises(RestoreError, match="belongs to no model"):
        _restore(dropped, tmp_path / "target")
    # A name no model may have.
    evil = tmp_path / "evil.tar.gz"
    _rewrite(archive, evil, manifest_change(lambda m: m["models"].update({"../x": {"versions": []}})))
    with pytest.raises(RestoreError, match="lists a model that cannot be restored"):
        _restore(evil, tmp_path / "target")
    newer = tmp_path / "newer.tar.gz"
    _rewrite(archive, newer, manifest_change(lambda m: m.update(format_version=5)))
    with pytest.raises(RestoreError, match="format version 5; this tpotserve reads 1, 2, 3 and 4"):
        _restore(newer, tmp_path / "target")
    _assert_nothing_restored(tmp_path / "target")


@pytest.mark.parametrize("default_model", ["iris", "flowers"])
def test_a_single_model_volume_not_moved_yet_is_backed_up_as_the_default_model(
    tmp_path: Path, default_model: str
) -> None:
    root = tmp_path / "source"
    legacy = _publish(ModelStore(root / "models", KEY), "v1", "v2")  # <model dir>/versions, /current.json
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(root, archive, default_model=default_model)

    assert list(manifest["models"]) == [default_model] and manifest["default_model"] == default_model
    assert manifest["models"][default_model]["pointer"]["version"] == "v2"
    prefix = f"models/models/{default_model}/"
    assert [n for n in _members(archive) if n.startswith("models/")] == [
        n for n in _members(archive) if n.startswith(prefix)
    ]
    target = tmp_path / "restored"
    _restore(archive, target, default_model=default_model)
    assert _tree(_store(target, default_model).root) == _tree(legacy.root)
    assert _store(target, default_model).read_pointer() == legacy.read_pointer()


def test_restore_refuses_when_any_model_it_holds_has_a_store(tmp_path: Path) -> None:
    root = tmp_path / "source"
    _publish(_store(root, "iris"), "v1")
    _publish(_store(root, "wine"), "w1", "w2")
    archive = _backup_to(root, tmp_path / "b.tar.gz")
    target = tmp_path / "target"
    mine = _publish(_store(target, "wine"), "mine")

    with pytest.raises(RestoreError, match="already holds a model store of model 'wine'.*--force"):
        _restore(archive, target)
    assert not _store(target, "iris").root.exists()  # refused as a whole, not model by model
    assert mine.read_pointer().version == "mine" and mine.list_version_ids() == ["mine"]
    assert not list((target / "models").rglob(".restore-*"))

    # A model the volume does not hold is no conflict: the others stay as they are.
    only_iris = tmp_path / "only-iris"
    shutil.copytree(_store(root, "iris").root, _store(only_iris, "iris").root)
    _restore(_backup_to(only_iris, tmp_path / "iris.tar.gz"), target)
    assert _store(target, "iris").read_pointer().version == "v1"
    assert mine.read_pointer().version == "mine"

    # --force: the archive's versions join each store and its pointers become current.
    _restore(archive, target, force=True)
    assert mine.read_pointer().version == "w2"
    assert mine.list_version_ids() == ["mine", "w1", "w2"]
    assert _store(target, "iris").read_pointer().version == "v1"


def test_a_restore_into_a_volume_not_moved_yet_survives_the_trainers_move(
    source: Path, tmp_path: Path
) -> None:
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    target = tmp_path / "target"
    _publish(ModelStore(target / "models", KEY), "old")  # the single-model layout, still in place
    registry = ModelRegistry(target / "models", KEY, DEFAULT)

    with pytest.raises(RestoreError, match=r"models already holds a model store of model 'iris'"):
        _restore(archive, target)
    _restore(archive, target, force=True)
    assert registry.store().root == _store(target).root  # what the API reads now
    assert registry.store().read_pointer().version == "v3"

    registry.migrate_legacy()  # the trainer, at its next start
    assert registry.store().read_pointer().version == "v3"  # the restored pointer wins
    assert (_store(target).root / "current.json.legacy").exists()  # the old one, kept beside
    assert registry.store().list_version_ids() == ["old", "v1", "v2", "v3"]


def test_a_single_model_volume_moved_during_the_backup_is_copied_from_its_new_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "source"
    _publish(ModelStore(root / "models", KEY), "v1", "v2", "v3")
    registry = ModelRegistry(root / "models", KEY, DEFAULT)
    real_open = snapshot._open_for_copy
    moved: list[str] = []

    def open_while_the_trainer_starts(path: Path):
        if not moved:
            moved.extend(registry.migrate_legacy())  # the real move, right now
        return real_open(path)

    monkeypatch.setattr(snapshot, "_open_for_copy", open_while_the_trainer_starts)
    monkeypatch.setattr(snapshot, "MOVE_PAUSE_S", 0.0)
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(root, archive, with_key=False)

    assert moved == ["current.json", "activations.jsonl", "v1", "v2", "v3"]
    iris = manifest["models"]["iris"]
    assert iris["pointer"]["version"] == "v3" and iris["pointer"]["previous"] == "v2"
    assert [v["version"] for v in iris["versions"]] == ["v1", "v2", "v3"]
    assert manifest["notes"] == []
    target = tmp_path / "restored"
    _restore(archive, target)
    assert _tree(_store(target).root) == _tree(_store(root).root)


def test_a_half_done_move_fails_the_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "source"
    legacy = _publish(ModelStore(root / "models", KEY), "v1")
    # A trainer died moving the store: the pointer is in the staging directory, the versions not yet.
    staging = root / "models" / "models" / ".migrating-iris"
    staging.mkdir(parents=True)
    os.replace(legacy.pointer_path, staging / "current.json")
    monkeypatch.setattr(snapshot, "MOVE_PAUSE_S", 0.0)
    archive = tmp_path / "out" / "b.tar.gz"
    with pytest.raises(BackupError, match="model 'iris' was being moved.*starting the trainer finishes"):
        _backup(root, archive)
    assert list(archive.parent.iterdir()) == []


# --- consistency while the stack writes ---------------------------------------------
def test_temp_dirs_and_half_written_versions_are_never_captured(source: Path, tmp_path: Path) -> None:
    models = _store(source).root
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
    assert {v["version"] for v in manifest["models"]["iris"]["versions"]} == {"v1", "v2", "v3"}
    assert any("'v-incomplete' left out" in note and "meta.json" in note for note in manifest["notes"])
    assert not [note for note in manifest["notes"] if ".tmp" in note]  # temp entries are not even looked at


@pytest.mark.parametrize("interrupted_file", ["meta.json", "model.joblib"])
def test_a_version_deleted_by_retention_during_the_backup_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted_file: str
) -> None:
    root = tmp_path / "source"
    store = _store(root)
    for name in ("v1", "v2", "v3", "v4"):
        store.write_version(name, _dump(name.encode() * 100), {})
    store.set_current("v3")
    store.set_current("v4")  # current v4, previous v3: protected; v1, v2 prunable

    real_open = snapshot._open_for_copy
    pruned: list[str] = []

    def open_while_retention_runs(path: Path):
        if path.parent.name == "v1" and path.name == interrupted_file and not pruned:
            pruned.extend(store.prune(keep=2))  # the real retention, right now
        return real_open(path)

    monkeypatch.setattr(snapshot, "_open_for_copy", open_while_retention_runs)
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(root, archive)

    assert pruned == ["v1", "v2"]
    assert [v["version"] for v in manifest["models"]["iris"]["versions"]] == ["v3", "v4"]
    assert manifest["models"]["iris"]["pointer"]["version"] == "v4"
    assert sum("deleted by retention" in note for note in manifest["notes"]) == 2
    assert not [n for n in _members(archive) if "/v1/" in n or "/v2/" in n]
    target = tmp_path / "restored"
    _restore(archive, target)
    assert _store(target).read_pointer().version == "v4"


def test_when_the_pointers_version_is_deleted_during_the_backup_it_follows_the_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "source"
    store = _store(root)
    store.write_version("v1", _dump(b"1" * 100), {})
    store.write_version("v2", _dump(b"2" * 100), {})
    store.set_current("v1")
    store.set_current("v2")  # the backup reads this pointer: v2, previous v1

    real_open = snapshot._open_for_copy
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

    monkeypatch.setattr(snapshot, "_open_for_copy", open_while_two_trainings_publish)
    archive = tmp_path / "b.tar.gz"
    manifest = _backup(root, archive)

    assert published == ["v3", "v4"]
    iris = manifest["models"]["iris"]
    assert iris["pointer"]["version"] == "v4" and iris["pointer"]["previous"] == "v3"
    assert [v["version"] for v in iris["versions"]] == ["v3", "v4"]
    target = tmp_path / "restored"
    _restore(archive, target)
    restored = _store(target)
    assert restored.read_pointer() == Pointer("v4", restored.read_meta("v4")["sha256"], previous="v3")


def test_a_pointer_naming_a_missing_version_fails_the_backup(source: Path, tmp_path: Path) -> None:
    shutil.rmtree(_store(source).versions_dir / "v3")  # deleted by hand
    archive = tmp_path / "out" / "b.tar.gz"
    with pytest.raises(BackupError, match="model 'iris': the current version 'v3'"):
        _backup(source, archive)
    assert list(archive.parent.iterdir()) == []  # neither the archive nor its temp file


@pytest.mark.parametrize(
    "what, corrupt",
    [
        ("model 'iris' version 'v1'", lambda root: _flip_byte(_store(root).artifact_path("v1"))),
        ("model 'iris' version 'v3'", lambda root: _truncate(_store(root).artifact_path("v3"))),
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
    _flip_byte(_store(source).artifact_path("v2"))
    result = _cli("create", "-", "--data-dir", str(source))
    assert result.returncode == 1
    assert b"create failed: model 'iris' version 'v2'" in result.stderr
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
def test_restore_refuses_a_model_dir_that_holds_a_store(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    target = tmp_path / "target"
    other = _store(target)
    other.write_version("other", _dump(b"other"), {})  # a version, even without a pointer

    written: list[Path] = []
    real_write = restoring._write_stream

    def write_stream(path: Path, *args, **kwargs):
        written.append(path)
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(restoring, "_write_stream", write_stream)
    with pytest.raises(RestoreError, match="already holds a model store of model 'iris'.*--force"):
        _restore(archive, target)
    assert written == []  # refused at the model's first member, before a byte of it was staged
    monkeypatch.undo()
    assert sorted(p.name for p in other.versions_dir.iterdir()) == ["other"]
    assert not other.pointer_path.exists()
    assert not [p for p in target.rglob("*") if p.is_file() and "other" not in p.parts]

    # --force: the archive's versions join the store and its pointer becomes current.
    _restore(archive, target, force=True)
    assert other.read_pointer().version == "v3"
    assert {m["version"] for m in other.list_versions()} == {"other", "v1", "v2", "v3"}


def test_restore_refuses_a_store_with_only_a_pointer(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    target = tmp_path / "target"
    _store(target).root.mkdir(parents=True)
    _store(target).pointer_path.write_text('{"version": "x", "sha256": "y"}')
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
    _assert_nothing_restored(target / "models")


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
    assert not (target / "models" / "models").exists()  # no version, no pointer
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
    with pytest.raises(RestoreError, match="models/models/iris/versions/v2/model.joblib.*tampered"):
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

            manifest["files"]["models/models/iris/versions/v1/model.joblib"] = {
                "sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)
            }
            return json.dumps(manifest).encode()
        return data

    _rewrite(archive, tampered, replace_and_cover)
    target = tmp_path / "target"
    with pytest.raises(RestoreError, match="model 'iris' version 'v1'.*does not match its metadata"):
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
        _info("models/models/iris/versions/../../../../escaped"),
        _info("models/models/../../escaped/current.json"),
        _info("models/versions/v1/../../../escaped"),  # format 1's names are checked alike
        _info("models/models/iris/versions/v1/model.joblib", tarfile.SYMTYPE, "/etc/passwd"),
        _info("models/models/iris/versions/v1/model.joblib", tarfile.SYMTYPE, "meta.json"),  # stays inside
        _info("models/versions/v1/model.joblib", tarfile.LNKTYPE, "../../../escaped"),
        _info("models/models/iris/versions/v1/model.joblib", tarfile.FIFOTYPE),
        _info("models/versions/v1/model.joblib", tarfile.CHRTYPE),
        _info("models/models/iris/versions/v1"),
        _info("models/models/iris"),
        _info("models/models/iris/versions/.tmp-v1-00000000/model.joblib"),
        _info("models/models/.migrating-iris/current.json"),
        _info("models/models/current/current.json"),  # reserved: /models/current is the default's
        _info("models/models/no spaces/current.json"),
        _info("models/models/-dash/versions/v1/meta.json"),
        _info("models/models/iris/.publish.lock"),
        _info("models/models/iris/versions/v1/other.txt"),
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
                extra = _info("models/models/iris/versions/v9/model.joblib")
                extra.size = 5
                out.addfile(extra, io.BytesIO(b"extra"))
            out.addfile(info, src.extractfile(info))
    target = tmp_path / "target"
    extra_name = "models/models/iris/versions/v9/model.joblib"
    with pytest.raises(RestoreError, match=f"'{extra_name}' is not in the manifest"):
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

    monkeypatch.setattr(restoring.os, "rename", rename_until_the_disk_fails)
    with pytest.raises(OSError, match="Input/output"):
        _restore(archive, target)
    monkeypatch.undo()
    restored = _store(target)
    assert (restored.versions_dir / "v1").is_dir()  # versions went in before the failure...
    assert not restored.pointer_path.exists()  # ...but the pointer comes only after all of them
    assert not list((target / "models").rglob(".restore-*"))  # staging removed


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
    assert b"backup: model iris: 3 version(s), current v3; 1 data set(s)" in created.stderr

    target = tmp_path / "target"
    env = {"MODEL_DIR": str(target / "models"), "DATASET_DIR": str(target / "datasets")}
    restored = _cli("restore", "-", stdin=created.stdout, env=env)
    assert restored.returncode == 0, restored.stderr.decode()
    assert b"current: iris v3" in restored.stderr
    assert _store(target).read_pointer().version == "v3"
    assert _tree(target / "models") == _tree(source / "models")

    again = _cli("restore", "-", stdin=created.stdout, env=env)
    assert again.returncode == 1 and b"already holds a model store of model 'iris'" in again.stderr

    # MODEL_NAME names the model a single-model volume is backed up as.
    legacy = tmp_path / "legacy"
    shutil.copytree(_store(source).root, legacy)
    renamed = _cli("create", "-", env={**source_env, "MODEL_DIR": str(legacy), "MODEL_NAME": "flowers"})
    assert renamed.returncode == 0, renamed.stderr.decode()
    assert b"backup: model flowers: 3 version(s), current v3" in renamed.stderr


DOCS = {"leaderboard.json": b'{"rows": []}', "card.json": b'{"model": "iris"}', "card.md": b"# Model card: iris v4\n"}


def _with_documents(root: Path) -> ModelStore:
    store = _store(root)
    store.write_version("v4", _dump(b"model v4 " * 500), {"task": "classification"}, DOCS)
    store.set_current("v4")
    return store


def test_a_versions_card_and_leaderboard_round_trip(source: Path, tmp_path: Path) -> None:
    _with_documents(source)
    archive = tmp_path / "b.tar.gz"
    _backup(source, archive)
    assert {f"models/models/iris/versions/v4/{name}" for name in DOCS} <= set(_members(archive))
    target = tmp_path / "target"
    _restore(archive, target)
    assert _tree(target) == _tree(source)
    restored = _store(target)
    assert {name: restored.read_document("v4", name) for name in DOCS} == DOCS


def test_a_missing_document_fails_the_backup(source: Path, tmp_path: Path) -> None:
    (_with_documents(source).versions_dir / "v4" / "card.md").unlink()
    with pytest.raises(BackupError, match="card.md"):
        _backup(source, tmp_path / "b.tar.gz")


@pytest.mark.parametrize("what", ["tampered", "dropped", "added"])
def test_restore_rejects_a_tampered_dropped_or_added_document(source: Path, tmp_path: Path, what: str) -> None:
    _with_documents(source)
    archive, changed = tmp_path / "b.tar.gz", tmp_path / "changed.tar.gz"
    _backup(source, archive)
    with tarfile.open(archive) as src, tarfile.open(changed, "w:gz") as out:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            if info.name.endswith("v4/card.md"):
                if what == "dropped":
                    continue
                data = b"# forged" if what == "tampered" else data
            if what == "added" and info.name.endswith("v3/meta.json"):
                extra = tarfile.TarInfo(info.name.replace("meta.json", "card.md"))
                extra.size = 3
                out.addfile(extra, io.BytesIO(b"# x"))
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    target = tmp_path / "target"
    with pytest.raises(RestoreError, match="card.md"):
        _restore(changed, target)
    _assert_nothing_restored(target)


def test_the_store_file_names_are_the_stores_own() -> None:
    for name in (datasets_module.DATA_NAME, datasets_module.META_NAME):
        match = backup_format.MEMBER.fullmatch(f"datasets/ds-1/{name}")
        assert match is not None and match["dfile"] == name
    assert backup_format.MEMBER.fullmatch("datasets/ds-1/other.csv") is None


def test_the_cli_starts_without_pandas() -> None:
    """The backup reads the data set store's names from tpotserve.names: starting the CLI (the
    compose ``backup`` service, ``make backup``) does not import pandas and the data set store."""
    probe = "import sys, tpotserve.backup; print(sorted({'pandas', 'tpotserve.datasets'} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "[]\n", run


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


# --- a compiled form added after publishing (tpotserve compile) --------------------------
ONNX = b"onnx graph bytes " * 64


def _compile_later(root: Path) -> ModelStore:
    """v2 gets a compiled form (model.onnx + compiled.json), v1 a recorded reason (compiled.json only)."""
    store = _store(root)
    store.add_compiled("v2", ONNX, {"engine": "onnxruntime"})
    store.add_compiled("v1", None, {"reason": "a step without a converter"})
    return store


def test_a_compiled_form_added_later_is_archived_and_restored_with_its_checks(source: Path, tmp_path: Path) -> None:
    _compile_later(source)
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    members = _members(archive)
    for name in ("v2/compiled.json", "v2/model.onnx", "v1/compiled.json"):
        assert f"models/models/iris/versions/{name}" in members
    assert "models/models/iris/versions/v1/model.onnx" not in members
    target = tmp_path / "restored"
    _restore(archive, target)
    assert _tree(target) == _tree(source)
    restored = _store(target)
    raw, record = restored.read_compiled("v2")  # its sha256 and signature checked as the API does
    assert raw == ONNX and record["artifact_sha256"] == restored.read_meta("v2")["sha256"]
    assert restored.read_compiled("v1") is None and restored.compiled_record("v1")["reason"]


def test_backup_refuses_a_compiled_form_its_record_does_not_cover(source: Path, tmp_path: Path) -> None:
    store = _compile_later(source)
    (store.versions_dir / "v2" / "model.onnx").write_bytes(ONNX + b"changed")
    with pytest.raises(BackupError, match="v2/model.onnx has sha256 .* the file is corrupt or was changed"):
        _backup(source, tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()

    (store.versions_dir / "v2" / "model.onnx").write_bytes(ONNX)
    sidecar = store.versions_dir / "v2" / "compiled.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "artifact_sha256": "0" * 64}))
    with pytest.raises(BackupError, match="compiled.json is unusable: it was not compiled from this version's artifact"):
        _backup(source, tmp_path / "b.tar.gz")


def _rewrite_member(archive: Path, target: Path, member: str, change) -> None:
    """``archive`` with ``member`` changed and the manifest's sha256 of it updated to match."""
    changed: dict[str, bytes] = {}

    def rewrite(info: tarfile.TarInfo, data: bytes) -> bytes:
        if info.name == member:
            changed[member] = change(data)
            return changed[member]
        if info.name == "manifest.json":  # the last member
            manifest = json.loads(data)
            new = changed[member]
            manifest["files"][member] = {"sha256": hashlib.sha256(new).hexdigest(), "bytes": len(new)}
            return json.dumps(manifest).encode()
        return data

    _rewrite(archive, target, rewrite)


def test_restore_refuses_a_compiled_form_that_does_not_hold(source: Path, tmp_path: Path) -> None:
    _compile_later(source)
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    member = "models/models/iris/versions/v2/compiled.json"

    def other_onnx(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), "sha256": "0" * 64}).encode()

    def other_artifact(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), "artifact_sha256": "0" * 64}).encode()

    for change, refused in (
        (other_onnx, "v2/model.onnx does not match the sha256 in its compiled.json"),
        (other_artifact, "v2/compiled.json: it was not compiled from this version's artifact"),
        (lambda data: b"{not json", "v2/compiled.json: "),
    ):
        bad = tmp_path / "bad.tar.gz"
        _rewrite_member(archive, bad, member, change)
        with pytest.raises(RestoreError, match=refused):
            _restore(bad, tmp_path / "target")
        _assert_nothing_restored(tmp_path / "target")


def test_restore_refuses_a_compiled_json_in_an_archive_older_than_it(source: Path, tmp_path: Path) -> None:
    _compile_later(source)
    archive = _backup_to(source, tmp_path / "b.tar.gz")
    relabeled = _relabeled(archive, tmp_path / "relabeled.tar.gz", 3)
    with pytest.raises(RestoreError, match="compiled.json' is not in a format 3 archive"):
        _restore(relabeled, tmp_path / "target")
    _assert_nothing_restored(tmp_path / "target")
