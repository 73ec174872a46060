"""The command line: ``python -m tpotserve.backup create|restore ARCHIVE|- [options]``.

Both read MODEL_DIR, DATASET_DIR and MODEL_NAME (the default model) from
:mod:`tpotserve.settings` unless ``--model-dir``/``--dataset-dir`` (or
``--data-dir DIR``: the native run's layout ``DIR/models``, ``DIR/datasets``,
``DIR/signing.key``) say otherwise. Exit status 1 when a backup or restore fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import BackupError, RestoreError, stderr
from .creating import create, create_file
from .restoring import restore, restore_file


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
    from ..settings import load_settings

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
        stderr(f"{args.command} failed: {exc}")
        return 1
    except OSError as exc:  # disk full, permissions, a vanished directory...
        stderr(f"{args.command} failed: {exc}")
        return 1
    return 0

