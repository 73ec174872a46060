"""The native launcher's parts, without starting the stack: its two entry points, the services
table, the process-group stop, and no import cycle between the stack and its supervisor."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from native import REPO
from native.proc import alive, descendants
from native.processes import start_group, stop_group
from native.services import SERVICE_COMMANDS, SERVICES
from native.stack import NativeStack


def test_both_entry_points_run_the_same_launcher() -> None:
    helps = [
        subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
        for module in ("native", "native.stack")
    ]
    assert helps[0] == helps[1] and "--api-instances" in helps[0]


@pytest.mark.parametrize(("imported", "not_imported"), [("native.supervisor", "native.stack"),
                                                        ("native.stack", "native.supervisor")])
def test_the_stack_and_its_supervisor_do_not_import_each_other(imported: str, not_imported: str) -> None:
    code = f"import sys, {imported}; assert {not_imported!r} not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_every_entrypoint_service_is_in_the_table() -> None:
    assert set(SERVICE_COMMANDS) <= set(SERVICES)


@pytest.mark.parametrize("name", ["redis-2", "worker-2", "nope"])
def test_an_unknown_service_is_refused_before_anything_starts(tmp_path: Path, name: str) -> None:
    stack = NativeStack(data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown service"):
        stack.start_service(name)
    assert stack.processes == {}


def test_stop_group_stops_the_whole_tree(tmp_path: Path) -> None:
    # The child leaves the group, as RQ's work-horse does: only the remembered tree finds it.
    script = "setsid sleep 60 & sleep 60 & wait"
    leader = start_group(["sh", "-c", script], cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            tree = descendants(leader.pid)
            if len(tree) >= 2:
                break
            time.sleep(0.05)
        assert len(tree) >= 2, tree
        stop_group(leader, timeout_s=5)
        assert leader.returncode is not None
        deadline = time.monotonic() + 5  # SIGKILL is delivered, not waited for
        while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in tree)
    finally:
        if leader.poll() is None:
            stop_group(leader, timeout_s=1)
