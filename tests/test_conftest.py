"""The test sessions' own dirs: gone when a session is stopped (SIGTERM) or killed (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import reap_dead_sessions

from kvmlab import paths

ROOT = Path(__file__).resolve().parent.parent

#: a stand-in for a test session killed outright: it makes a session's three dirs, and in
#: its temp dir a kvmlab VM dir whose reaping runs a command (as a libvirt domain's does),
#: then ends without any cleanup
_KILLED_SESSION = """
import os, sys, tempfile
from pathlib import Path
tmp, ram, scratch, marker = map(Path, sys.argv[1:])
session = f"gw0-{os.getpid()}"
for d in (tmp / f"kvmlabtests-{session}", ram / f"kvmlabtests-{session}",
          scratch / f"tests-{session}"):
    d.mkdir()
    (d / "left.txt").write_text("left by a killed session")
os.environ["TMPDIR"] = str(tmp / f"kvmlabtests-{session}")
tempfile.tempdir = None
from kvmlab.store.tmpdirs import own, owned_tmpdir
vm = owned_tmpdir("kvmlab-vm-")
own(vm, on_reap=["touch", str(marker)])
print(session)
os._exit(0)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_killed_sessions_dirs_are_reaped_and_nothing_else(tmp_path: Path) -> None:
    tmp, ram, scratch = (tmp_path / n for n in ("tmp", "ram", "scratch"))
    for d in (tmp, ram, scratch):
        d.mkdir()
    marker = tmp_path / "on-reap-ran"
    session = subprocess.run([sys.executable, "-c", _KILLED_SESSION, str(tmp), str(ram),
                              str(scratch), str(marker)], check=True, capture_output=True,
                             text=True, cwd=ROOT).stdout.strip()
    killed = {tmp / f"kvmlabtests-{session}", ram / f"kvmlabtests-{session}",
              scratch / f"tests-{session}"}
    assert all(d.is_dir() for d in killed)
    # what must stay: a live session's dir, a link named like a dead session's (and what
    # it points to), and another user's dir named like one
    live = tmp / f"kvmlabtests-gw1-{os.getpid()}"
    live.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not a session's")
    link = tmp / f"kvmlabtests-gw2-{_dead_pid()}"
    link.symlink_to(victim)
    theirs = tmp / f"kvmlabtests-gw3-{_dead_pid()}"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)

    removed = reap_dead_sessions(tmp, ram, scratch)

    assert set(removed) == killed
    assert not any(d.exists() for d in killed)
    assert marker.exists(), "the killed session's VM dir was not reaped by kvmlab's reaper"
    assert live.is_dir() and link.is_symlink() and (victim / "keep.txt").exists()
    assert theirs.is_dir()
    assert reap_dead_sessions(tmp, ram, scratch) == []


def test_a_session_stopped_by_sigterm_tears_down_and_removes_its_dirs(tmp_path: Path) -> None:
    """SIGTERM stops a test session as Ctrl-C does: its fixtures are torn down and its dirs
    (temp, RAM) removed, not left for the next session to reap."""
    test = tmp_path / "test_waits.py"
    torn_down = tmp_path / "torn-down"
    test.write_text(f"""
import time
import pytest

@pytest.fixture
def held():
    yield
    open({str(torn_down)!r}, "w").close()

def test_waits(held):
    print("STARTED", flush=True)
    time.sleep(120)
""")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "conftest", "-s", "-q",
                             "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(test)],
                            cwd=ROOT / "tests", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        out = []
        for line in proc.stdout:
            out.append(line)
            if "STARTED" in line:
                break
        assert any("STARTED" in ln for ln in out), "".join(out)
        session = f"kvmlabtests-main-{proc.pid}"
        dirs = [Path(tempfile.gettempdir()) / session, paths.ram_dir() / session]
        assert all(d.is_dir() for d in dirs)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, "".join(out) + rest        # pytest's "interrupted"
    assert torn_down.exists(), "the test's fixture was not torn down"
    deadline = time.monotonic() + 5
    while any(d.exists() for d in dirs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [d for d in dirs if d.exists()]
