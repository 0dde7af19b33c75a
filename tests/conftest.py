"""Shared fixtures.  Integration tests use a real QEMU (TCG) and the real guest.

There is deliberately no skip when QEMU or the guest is missing: ``make test``
installs and builds them, and a suite that passes without QEMU proves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from kvmlab import paths
from kvmlab.guest.build import Guest, build_guest


# Every process this test session starts inherits this token in its environment, so the
# leak check sees this session's QEMUs (even orphaned ones) and not another user's.
SESSION_TOKEN = f"KVMLAB_TEST_SESSION={uuid.uuid4().hex}"
os.environ["KVMLAB_TEST_SESSION"] = SESSION_TOKEN.split("=", 1)[1]


#: the programs kvmlab starts: QEMU, and the fault injectors' daemons
DAEMONS = ("qemu-system", "qemu-storage-daemon", "ganesha.nfsd", "rpcbind")


def qemu_pids() -> set[int]:
    """PIDs of QEMU (and fault daemon) processes started by this test session."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if not any(d in args for d in DAEMONS):
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if SESSION_TOKEN.encode() in env:
            pids.add(int(pid))
    return pids


def vm_tmpdirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir())
            if p.startswith(("kvmlab-vm-", "kvmlab-fault-"))}


@pytest.fixture(scope="session", autouse=True)
def guest() -> Guest:
    """The real guest, for every test: without QEMU and the guest the suite fails."""
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86_64 missing: run 'make setup'"
    assert shutil.which("qemu-img"), "qemu-img missing: run 'make setup'"
    return build_guest()


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Every test must stop every QEMU it started and remove every VM temp dir."""
    before_pids, before_dirs = qemu_pids(), vm_tmpdirs()
    yield
    left = qemu_pids() - before_pids
    for pid in left:  # clean up for the next test, then fail this one
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not left, f"QEMU or fault daemon processes left running: {sorted(left)}"
    assert not (vm_tmpdirs() - before_dirs), "VM temp dirs left behind"


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder for images on a file system that supports O_DIRECT (cache=none)."""
    d = paths.scratch_dir() / f"test-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Where test runs are recorded (kept out of data/runs)."""
    d = tmp_path / "runs"
    d.mkdir()
    return d
