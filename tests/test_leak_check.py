"""The suite's own leak check (conftest's ``nothing_left_behind``), tried in an inner
pytest session: it fails a test that leaves one of its processes running, and it does not
blame a test for a process of another session (another xdist worker)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

INNER = '''
import os, subprocess, uuid

def _fake_qemu(env):
    # a process that looks like QEMU to the leak check (its argv names qemu-system)
    return subprocess.Popen(["bash", "-c", "exec -a qemu-system-x86_64-fake sleep 30"], env=env)

def test_leaves_its_own_qemu():
    _fake_qemu(dict(os.environ))

def test_another_workers_qemu_is_not_mine():
    other = {**os.environ, "KVMLAB_TEST_SESSION": uuid.uuid4().hex}
    p = _fake_qemu(other)
    open(os.environ["OTHER_PID_FILE"], "w").write(str(p.pid))
'''


def test_the_leak_check_blames_the_test_that_leaked_and_only_it(tmp_path: Path) -> None:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER)
    other = tmp_path / "other.pid"
    env_file = {"OTHER_PID_FILE": str(other)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:randomly", str(tmp_path / "test_inner.py")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, **env_file})
    try:
        out = res.stdout
        assert "2 passed, 1 error" in out, out          # the error: the first test's teardown
        assert "ERROR test_inner.py::test_leaves_its_own_qemu" in out, out
        assert "test_another_workers_qemu_is_not_mine" not in out     # not blamed
        assert "QEMU or fault daemon processes left running" in out
    finally:
        if other.exists():
            subprocess.run(["kill", other.read_text()], check=False)
