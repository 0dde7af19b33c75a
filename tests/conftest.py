"""Shared fixtures and the two tiers of the suite.

- The **pure** tier (``make check``, ``pytest -m "not qemu"``): model, analysis and plots on
  runs recorded from real QEMU, sweep specs, CLI argument errors, notebook pairing.  It
  runs without QEMU installed: with ``KVMLAB_TIER=pure`` the QEMU programs are shadowed on
  PATH by shims that fail loudly, so a pure test that starts QEMU fails.
- The **integration** tier (``pytest -m qemu``): a real QEMU (TCG), the real guest,
  libvirtd, nfs-ganesha.  Every test marked ``qemu`` gets the session's ``guest`` fixture,
  which builds the guest.  There is deliberately no skip when QEMU or the guest is
  missing: ``make test`` installs and builds them, and a suite that passes without QEMU
  proves nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab import _proc, paths
from kvmlab.errors import KvmlabError
from kvmlab.experiments.options import RunOptions
from kvmlab.guest.build import Guest, build_guest
from kvmlab.store.tmpdirs import reap_stale_tmpdirs

# A suite started in the background of a shell without job control inherits SIGINT ignored,
# and so would every kvmlab the tests start: their Ctrl-C tests would then see no Ctrl-C.
# Python's own handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Every process this test session (each pytest-xdist worker is one) starts inherits this
# token in its environment, so the leak check sees this session's QEMUs (even orphaned
# ones) and not another worker's or another user's.
SESSION_TOKEN = f"KVMLAB_TEST_SESSION={uuid.uuid4().hex}"
os.environ["KVMLAB_TEST_SESSION"] = SESSION_TOKEN.split("=", 1)[1]

# Each test session (each xdist worker is one) has a temp dir, a RAM dir and a scratch
# folder of its own: its leak check, its reaper and the tests that look for leftovers there
# see only what this session made, not another worker's or another kvmlab's on the same
# machine (a kvmlab run in one worker reaps the dirs of a benchmark another worker's test
# has just killed, before that test can see them left behind).
# (The temp dir is sticky and open to all, like /tmp: the tests of what another local user
# can plant there need that.)  Tests importing this module again reuse the session's.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
_WORKER_DIRS: list[Path] = []


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def reap_dead_sessions(tmp: Path, ram: Path, scratch: Path) -> list[Path]:
    """Remove the dirs of test sessions killed outright (SIGKILL: no teardown ran; a
    SIGTERM stops a session as Ctrl-C does, with its teardown): those in *tmp*, *ram* and
    *scratch* named for a process that is gone, real dirs (not links) owned by this user.
    What kvmlab left in them goes first, by kvmlab's own reaper (a VM dir's libvirt
    domain, a fault's mount); a dir with a mount still below it is left alone.
    Returns what it removed."""
    uid = os.getuid()
    stale: dict[str, list[Path]] = {}
    for parent, prefix in ((tmp, "kvmlabtests-"), (ram, "kvmlabtests-"), (scratch, "tests-")):
        for d in parent.glob(f"{prefix}*-*"):
            pid = d.name.rpartition("-")[2]
            try:
                st = d.lstat()
            except OSError:
                continue
            if pid.isdigit() and stat.S_ISDIR(st.st_mode) and st.st_uid == uid \
                    and not _proc.alive(int(pid)):
                stale.setdefault(d.name.removeprefix(prefix), []).append(d)
    removed = []
    for session, dirs in stale.items():
        try:            # (another worker may be reaping the same dirs: best effort)
            reap_stale_tmpdirs(tmp=tmp / f"kvmlabtests-{session}", ram=ram / f"kvmlabtests-{session}",
                               scratch=scratch / f"tests-{session}")
            mounts = Path("/proc/mounts").read_text().split()
        except (OSError, KvmlabError):
            continue
        for d in dirs:
            if not any(m.startswith(f"{d}/") for m in mounts):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


if os.environ.get("KVMLAB_TEST_TMP_PID") != str(os.getpid()):
    # a SIGTERM (a CI's timeout, the integration script's own TERM) tears down as Ctrl-C
    # does: every fixture's VM stopped, this session's dirs removed (pytest_unconfigure)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _stop_on_sigterm)
        except ValueError:                  # not the main thread: left as it is
            pass
    reap_dead_sessions(Path(tempfile.gettempdir()), paths.ram_dir(), paths.data_dir() / "scratch")
    _tmp = Path(tempfile.gettempdir()) / f"kvmlabtests-{WORKER}-{os.getpid()}"
    _tmp.mkdir()
    _tmp.chmod(0o1777)
    os.environ["TMPDIR"] = str(_tmp)
    tempfile.tempdir = None                 # gettempdir() reads TMPDIR again
    _scratch = paths.data_dir() / "scratch" / f"tests-{WORKER}-{os.getpid()}"
    os.environ["KVMLAB_SCRATCH"] = str(_scratch)
    _ram = paths.ram_dir() / f"kvmlabtests-{WORKER}-{os.getpid()}"
    _ram.mkdir(mode=0o700)
    os.environ["KVMLAB_RAM"] = str(_ram)
    os.environ["KVMLAB_TEST_TMP_PID"] = str(os.getpid())
    _WORKER_DIRS += [_tmp, _scratch, _ram]


#: the programs kvmlab starts: QEMU, and the fault injectors' daemons
DAEMONS = ("qemu-system", "qemu-storage-daemon", "ganesha.nfsd", "rpcbind", "nbdkit")


def qemu_pids(names: tuple[str, ...] = DAEMONS) -> set[int]:
    """PIDs of QEMU (and fault daemon) processes started by this test session (those whose
    command line names one of *names*); zombies are gone already and are not counted."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if not any(d in args for d in names):
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
            if p.startswith(("kvmlab-vm-", "kvmlab-fault-", "kvmlab-caps-"))}


#: what the pure tier shadows on PATH
QEMU_PROGRAMS = ("qemu-system-x86_64", "qemu-img", "qemu-io", "qemu-nbd",
                 "qemu-storage-daemon", "virsh", "libvirtd", "ganesha.nfsd")


def _shadow_qemu(folder: Path) -> None:
    """PATH shims for the pure tier: every QEMU program fails with one line."""
    folder.mkdir(parents=True, exist_ok=True)
    for prog in QEMU_PROGRAMS:
        shim = folder / prog
        shim.write_text(f"#!/bin/sh\necho 'pure test tier: {prog} must not run here' >&2\n"
                        "exit 127\n")
        shim.chmod(0o755)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


_SHIMS: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("KVMLAB_TIER") == "pure":
        _SHIMS.append(Path(tempfile.mkdtemp(prefix="kvmlab-pure-shims-")))
        _shadow_qemu(_SHIMS[0])


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in [*_SHIMS, *_WORKER_DIRS]:
        shutil.rmtree(folder, ignore_errors=True)


#: where a failed test's run folders are kept (its temp dir goes with its session)
FAILED_RUNS = paths.data_dir() / "test-artifacts" / "failed-runs"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that failed with recorded runs keeps them (consoles, samples, trace) in
    :data:`FAILED_RUNS`, and its report says where: a flake seen once can be read later."""
    outcome = yield
    report = outcome.get_result()
    runs = getattr(item, "funcargs", {}).get("runs")
    if report.when != "call" or not report.failed or not isinstance(runs, Path) \
            or not runs.is_dir() or not any(runs.iterdir()):
        return
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.name)[:80]
    dest = FAILED_RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{uuid.uuid4().hex[:6]}"
    try:
        shutil.copytree(runs, dest, ignore=shutil.ignore_patterns("*.qcow2", "*.raw", "*.img"))
    except OSError as err:              # a full disk must not hide the test's own failure
        shutil.rmtree(dest, ignore_errors=True)
        report.sections.append(("kept runs", f"not kept: {err}"))
        return
    report.sections.append(("kept runs", f"this test's run folders: {dest}"))


@pytest.hookimpl(tryfirst=True)             # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A pure test (not marked ``qemu``) must not ask for the guest.  Tests of the host's
    one NFS server (marked ``nfs``) share one xdist group: one worker runs them, one after
    another.  Tests marked ``long`` come first, the longest first (``long(minutes)``):
    pytest-xdist hands tests out in this order, and a test of minutes handed out last would
    end the run alone on one worker."""
    for item in items:
        if item.get_closest_marker("qemu") is None and "guest" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} uses the guest but is not marked qemu")
        if item.get_closest_marker("solo") is not None and item.get_closest_marker("timing") is None:
            raise pytest.UsageError(f"{item.nodeid} is marked solo but not timing")
        if item.get_closest_marker("nfs") is not None:
            item.add_marker(pytest.mark.xdist_group("nfs"))

    def minutes(item: pytest.Item) -> float:
        mark = item.get_closest_marker("long")
        return 0.0 if mark is None else float(mark.args[0]) if mark.args else 1.0

    items.sort(key=minutes, reverse=True)


@pytest.fixture(autouse=True)
def _integration_needs_guest(request: pytest.FixtureRequest) -> None:
    """Every test marked ``qemu`` gets the built guest (and fails without QEMU)."""
    if request.node.get_closest_marker("qemu") is not None:
        request.getfixturevalue("guest")


@pytest.fixture(scope="session")
def guest() -> Guest:
    """The real guest, for every integration test: without QEMU and the guest they fail."""
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
def opts(runs: Path) -> RunOptions:
    """Experiment options for tests: runs under *runs*, TCG."""
    return RunOptions(runs_dir=runs, accel="tcg")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Where test runs are recorded (kept out of data/runs)."""
    d = tmp_path / "runs"
    d.mkdir()
    return d
