"""Launch and shutdown of the embedded lab's QEMU, and cleanup on every exit path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmlab import paths
from kvmlab.errors import BadInput, ConnectionLost, GuestNotBuilt, LaunchError
from kvmlab.guest.build import Guest
from kvmlab.qemu import images
from kvmlab.store.tmpdirs import reap_stale_tmpdirs
from kvmlab.vm.machine import Machine, resolve_accel

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest


def _gone(vm: Machine, pid: int, tmp: Path) -> None:
    assert not vm.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not tmp.exists(), "temp dir (QMP socket, logs) left behind"


@pytest.fixture
def disk(scratch: Path) -> Path:
    images.make_guest_disk(scratch / "disk.qcow2", 32)
    return scratch / "disk.qcow2"


def test_launch_boot_and_shutdown(disk: Path) -> None:
    vm = Machine(disk, accel="tcg")
    vm.launch()
    pid, tmp = vm.pid, vm.tmpdir
    assert pid and tmp and (tmp / "qmp.sock").exists()
    assert oct(tmp.stat().st_mode & 0o777) == "0o700"
    vm.wait_guest("ready", timeout=60)
    assert vm.backend.run_state() == "running"
    assert vm.accel == "tcg"
    vm.shutdown()
    vm.shutdown()  # twice is fine
    _gone(vm, pid, tmp)
    assert vm.exitcode == 0


def test_qemus_own_output_stays_out_of_the_guests_console(disk: Path, scratch: Path) -> None:
    """QEMU prints ``Formatting '...'`` to its stdout when ``drive-mirror`` creates the
    target.  That text once ran into a guest line on a shared stream (a fio field read
    ``194Formatting``): the console is a socket of its own, so it has none of it."""
    log = scratch / "console.log"
    target = scratch / "made-by-qemu.qcow2"
    with Machine(disk, accel="tcg", console_log=log) as vm:
        vm.wait_guest("ready", timeout=60)
        job = vm.mirror(vm.disk_id, target, "qcow2", mode="absolute-paths")
        job.wait_ready(60)
        job.cancel()
        job.wait_done(30)
        said = [text for _, text in vm.console.lines]
    assert target.exists()                      # QEMU created it, and so printed the notice
    assert said and any("KVMLAB" in t for t in said)
    assert not [t for t in said if "Formatting" in t]
    assert "Formatting" not in log.read_text()


def test_the_guest_mounts_its_tools_disk_found_by_its_serial(disk: Path) -> None:
    """The guest mounts the read-only tools disk (found by its serial, after the VM's own
    disks) and says the fio it holds: the host's version (fio itself runs from it, through
    the loader and the ~80 MiB of libraries it links, in tests/test_workloads.py)."""
    host = subprocess.run(["fio", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()
    vm = Machine(disk, accel="tcg", tools=True)
    vm.launch()
    try:
        tools = vm.wait_guest("tools", timeout=60)
        assert tools.data["fio"] == host.replace(" ", "_") and tools.data["dev"] == "/dev/vdb"
        vm.wait_guest("ready", timeout=30)
        assert [d.id for d in vm.drives] == ["drive0"]
    finally:
        vm.shutdown()


def test_qmp_short_form(disk: Path) -> None:
    """The watch's id-less query: answers, reports QEMU's errors, a second concurrent one
    (qemu.qmp allows one id-less command at a time) takes the normal path, and a lost
    connection ends a pending one with qemu.qmp's error (and the lab VM still goes)."""
    import asyncio

    from qemu.qmp.qmp_client import ExecInterruptedError, ExecuteError

    with Machine(disk, accel="tcg") as vm:
        pid, tmp = vm.pid, vm.tmpdir
        qmp, aio = vm.backend._qmp, vm.backend._aio  # type: ignore[attr-defined]
        sent: list[dict[str, object]] = []
        hook = qmp._cb_outbound
        qmp._cb_outbound = lambda msg: (sent.append(dict(msg)), hook(msg))[1]
        assert aio.run(qmp.execute_short("query-block-jobs"), timeout=10) == []
        assert sent == [{"execute": "query-block-jobs"}]      # no id: 30 bytes, not 50
        vm.backend.execute("query-status")                     # the backend's path too
        assert sent[-1] == {"execute": "query-status"}
        with pytest.raises(ExecuteError, match="has not been found"):
            aio.run(qmp.execute_short("query-no-such-thing"), timeout=10)

        async def two() -> list[object]:
            return list(await asyncio.gather(qmp.execute_short("query-status"),
                                             qmp.execute_short("query-status")))
        assert [r["status"] for r in aio.run(two(), timeout=10)] == ["running", "running"]
        assert None not in qmp._pending                        # the id-less slot is free again

        async def cut() -> list[object]:                       # connection lost mid-command
            return list(await asyncio.gather(qmp.execute_short("query-status"),
                                             qmp.disconnect(), return_exceptions=True))
        lost, _ = aio.run(cut(), timeout=10)
        assert isinstance(lost, ExecInterruptedError)
        assert not qmp._pending
    _gone(vm, pid, tmp)


def test_qmp_public_path_when_qemu_qmp_is_untested(disk: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With an untested qemu.qmp (FAST_PATH off) every command and the sampler go through
    qemu.qmp's public execute(): each message carries an id, and sampling still works."""
    from kvmlab.backends import qmp_client

    monkeypatch.setattr(qmp_client, "FAST_PATH", False)
    got: list[int] = []
    errors: list[str] = []
    with Machine(disk, accel="tcg") as vm:
        pid, tmp = vm.pid, vm.tmpdir
        # a guest at rest: a resumed one loads its drivers and mounts its disk first, and
        # QEMU answers late while it does (14 of 25 samples came in 0.5 s once)
        vm.wait_guest("ready", timeout=60)
        qmp = vm.backend._qmp  # type: ignore[attr-defined]
        sent: list[dict[str, object]] = []
        hook = qmp._cb_outbound
        qmp._cb_outbound = lambda msg: (sent.append(dict(msg)), hook(msg))[1]
        assert vm.backend.execute("query-status")["status"] == "running"
        assert sent and all("id" in m for m in sent)
        stop = vm.backend.start_sampler(  # type: ignore[attr-defined]
            0.02, lambda mono, wall, jobs, late: got.append(len(jobs)), errors.append)
        time.sleep(0.5)
        stop()
        assert len(got) >= 15 and not errors
        assert all("id" in m for m in sent if m.get("execute") == "query-block-jobs")
    _gone(vm, pid, tmp)


@pytest.mark.timing            # paced samples at 100 Hz: alone on the host
@pytest.mark.solo
def test_job_sampler_paths(disk: Path) -> None:
    """The recorder's in-loop sampler against a real QEMU: paced samples; a busy id-less
    slot falls back to qemu.qmp's normal path; a failing callback is reported and
    sampling goes on with the connection intact; QEMU's error for a query is reported;
    nothing is delivered after stop; a killed QEMU ends it with "connection lost"."""
    import asyncio

    from kvmlab.backends.qmp_client import JobSampler, _Slot

    got: list[tuple[float, int]] = []
    errors: list[str] = []
    boom = [False]

    def on_jobs(mono: float, wall: float, jobs: list[object], late: int) -> None:
        if boom[0]:
            boom[0] = False
            raise ValueError("callback bug")
        got.append((mono, len(jobs)))

    with Machine(disk, accel="tcg") as vm:
        pid, tmp = vm.pid, vm.tmpdir
        vm.wait_guest("ready", timeout=60)       # a guest at rest: QEMU answers at once
        be = vm.backend
        qmp, aio = be._qmp, be._aio  # type: ignore[attr-defined]
        job = vm.mirror("drive0", tmp / "t.qcow2", speed=64 * 1024, buf_size=64 * 1024)
        stop = be.start_sampler(0.01, on_jobs, errors.append)  # type: ignore[attr-defined]
        time.sleep(1)
        paced = [t for t, _ in got]
        assert len(paced) >= 80 and all(n == 1 for _, n in got)
        gaps = sorted(b - a for a, b in zip(paced, paced[1:]))
        assert 0.007 <= gaps[len(gaps) // 2] <= 0.013

        async def hold() -> None:                   # another id-less command in flight
            while None in qmp._pending:             # (once the sampler's own is answered)
                await asyncio.sleep(0.001)
            qmp._pending[None] = _Slot(qmp, lambda reply: None)

        async def free() -> None:
            del qmp._pending[None]
        aio.run(hold(), timeout=5)
        n = len(got)
        time.sleep(0.5)
        aio.run(free(), timeout=5)
        assert len(got) - n >= 30, "no samples while the id-less slot was taken"

        boom[0] = True
        n = len(got)
        time.sleep(0.3)
        assert errors == ["query-block-jobs: ValueError: callback bug"]
        assert len(got) - n >= 15 and be.execute("query-status")["status"] == "running"
        stop()
        n = len(got)
        time.sleep(0.2)
        assert len(got) == n, "samples delivered after stop()"

        bad: list[str] = []

        async def start_bad() -> JobSampler:
            sampler = JobSampler(qmp, 0.01, on_jobs, bad.append)
            sampler.CMD = "query-no-such-thing"
            sampler.start()
            return sampler
        sampler = aio.run(start_bad(), timeout=5)
        time.sleep(0.3)

        async def halt() -> None:
            sampler.stop()
        aio.run(halt(), timeout=5)
        assert len(bad) >= 10 and all("has not been found" in e for e in bad)

        errors.clear()
        stop = be.start_sampler(0.01, on_jobs, errors.append)  # type: ignore[attr-defined]
        time.sleep(0.2)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if errors:
                break
            time.sleep(0.1)
        # in flight (ExecInterruptedError) or at the next tick (StateError): reported once
        assert len(errors) == 1 and errors[0].startswith("query-block-jobs: connection lost")
        stop()
        del job
    _gone(vm, pid, tmp)


def test_exception_inside_with_cleans_up(disk: Path) -> None:
    with pytest.raises(RuntimeError):
        with Machine(disk, accel="tcg") as vm:
            pid, tmp = vm.pid, vm.tmpdir
            raise RuntimeError("boom")
    _gone(vm, pid, tmp)


def test_keyboard_interrupt_cleans_up(disk: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with Machine(disk, accel="tcg") as vm:
            pid, tmp = vm.pid, vm.tmpdir
            vm.wait_guest("boot", timeout=60)
            raise KeyboardInterrupt
    _gone(vm, pid, tmp)


def test_qemu_killed_by_sigkill(disk: Path) -> None:
    with Machine(disk, accel="tcg") as vm:
        pid, tmp = vm.pid, vm.tmpdir
        vm.wait_guest("boot", timeout=60)
        assert vm.died() is None
        vm.kill(signal.SIGKILL)
        with pytest.raises(ConnectionLost) as lost:
            for _ in range(50):  # a QMP command soon fails (it does not hang), saying why
                vm.backend.block_jobs()
                time.sleep(0.1)
        assert "connection lost" in str(lost.value)
        assert "QEMU exited: killed by signal 9 (SIGKILL)" in str(lost.value)
        # one line, for a wait that must not go on (a migration's): how, and QEMU's last word
        vm.wait_exit(5)               # (its monitor closes a moment before it is reaped)
        died = vm.died()
        assert died is not None and died.startswith("QEMU exited: killed by signal 9 (SIGKILL)")
        assert "\n" not in died
    _gone(vm, pid, tmp)
    assert vm.exitcode == -signal.SIGKILL


def test_python_killed_takes_qemu_with_it(disk: Path, tmp_path: Path) -> None:
    """kill -9 of the Python process that launched QEMU leaves no QEMU (pdeathsig)."""
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, time\n"
        "from kvmlab.vm.machine import Machine\n"
        f"vm = Machine({str(disk)!r}, accel='tcg')\n"
        "vm.launch()\n"
        "print(vm.pid, flush=True)\n"
        "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        qemu_pid = int(child.stdout.readline())  # type: ignore[union-attr]
        os.kill(qemu_pid, 0)
    finally:
        child.kill()
        child.wait()
    for _ in range(50):
        try:
            os.kill(qemu_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("QEMU outlived the killed Python process")
    # what the killed process could not remove, the next launch (or this call) reaps
    assert any(p.name.startswith("kvmlab-vm-") for p in reap_stale_tmpdirs())


def test_launch_failure_reports_exit_code_and_output(disk: Path) -> None:
    vm = Machine(disk, accel="tcg", extra_args=["-bogus-option"])
    with pytest.raises(LaunchError) as info:
        vm.launch()
    err = info.value
    assert err.exitcode == 1
    assert "bogus" in err.output and "bogus" in str(err)
    assert "\n" not in str(err)
    assert err.command[0].endswith("qemu-system-x86_64")
    assert not vm.running and vm.tmpdir is None


def test_missing_qemu_binary(disk: Path) -> None:
    """An unknown build or a missing binary is bad input: one line naming the builds, before
    anything starts."""
    with pytest.raises(BadInput, match=r"qemu='qemu-system-nonexistent' is not a QEMU build "
                                       r"here; builds: system"):
        Machine(disk, accel="tcg", qemu="qemu-system-nonexistent")
    with pytest.raises(BadInput, match=r"qemu='/nonexistent/qemu-system-x86_64': no such "
                                       r"executable; builds: system"):
        Machine(disk, accel="tcg", qemu="/nonexistent/qemu-system-x86_64")


def test_guest_not_built(disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMLAB_DATA", str(tmp_path))
    with pytest.raises(GuestNotBuilt, match="kvmlab guest build"):
        Machine(disk, accel="tcg")


def test_bad_machine_arguments(scratch: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        Machine(scratch / "nope.qcow2")
    with pytest.raises(BadInput, match="cache"):
        Machine(None, cache="fast")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="accel"):
        Machine(None, accel="hvf")


def test_accel_auto_probes_and_records(guest: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto boots a probe guest under KVM; the answer is cached per host boot."""
    from kvmlab.vm import machine
    monkeypatch.delenv("KVMLAB_ACCEL", raising=False)
    monkeypatch.setattr(machine, "_ACCEL_CACHE", {})
    cache = paths.guest_dir() / "accel.json"
    cache.unlink(missing_ok=True)
    got = resolve_accel("auto", guest=guest)
    assert got in ("kvm", "tcg")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert got == "tcg"
    entries = json.loads(cache.read_text())["entries"]
    assert [e["accel"] for e in entries.values()] == [got]      # one entry: this build's
    with Machine(None, accel="auto") as vm:
        vm.wait_guest("boot", timeout=60)
        assert vm.accel == got
        assert f"-accel {got}" in " ".join(vm.command)


def test_paths_with_commas_reach_qemu(scratch: Path) -> None:
    """QEMU option strings split on commas; kvmlab doubles them in every path it passes."""
    odd = scratch / "a,b=c"
    odd.mkdir()
    images.make_guest_disk(odd / "disk,1.qcow2", 32)
    with Machine(odd / "disk,1.qcow2", accel="tcg") as vm:
        vm.wait_guest("ready", timeout=60)
        assert vm.block_info()[0].file == str(odd / "disk,1.qcow2")


def test_waits_fail_at_once_when_qemu_dies(disk: Path) -> None:
    """QEMU killed during wait_ready (and wait_done): the wait ends within a second with
    the real cause, not after its timeout with 'connection lost'."""
    import threading

    with Machine(disk, accel="tcg") as vm:
        pid, tmp = vm.pid, vm.tmpdir
        assert pid is not None and tmp is not None
        job = vm.mirror("drive0", tmp / "t.qcow2", speed=64 * 1024)     # far from ready
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"QEMU exited: killed by signal 9 \(SIGKILL\)"):
            job.wait_ready(300)
        assert time.monotonic() - t0 < 60           # at the death, not the wait's 300 s
        t0 = time.monotonic()
        with pytest.raises(ConnectionLost, match="killed by signal 9"):
            job.wait_done(300)
        assert time.monotonic() - t0 < 60
    _gone(vm, pid, tmp)


def _broken_guest(guest: Guest, tmp_path: Path, cut: str) -> Path:
    """A copy of the built guest with *cut* (vmlinuz or initrd.img) cut in half (not its
    saved boots: other workers' VMs write them meanwhile)."""
    import shutil

    d = tmp_path / "guest"
    shutil.copytree(guest.kernel.parent, d, ignore=shutil.ignore_patterns("tools.img", "saved"))
    data = (d / cut).read_bytes()
    (d / cut).write_bytes(data[:len(data) // 2])
    return d


def test_a_guest_whose_files_changed_is_refused(guest: Guest, tmp_path: Path) -> None:
    from kvmlab.errors import GuestChanged
    from kvmlab.guest.build import build_guest, load_guest
    d = _broken_guest(guest, tmp_path, "initrd.img")
    with pytest.raises(GuestChanged, match=r"initrd.img .* changed since it was built: "
                       r"rebuild with 'kvmlab guest build --force'"):
        load_guest(d)
    with pytest.raises(GuestChanged):
        build_guest(d)                                     # not silently replaced
    # the kernel, the initramfs and, where fio was installed, the tools disk
    assert set(guest.info["files_sha256"]) == (           # type: ignore[arg-type]
        {"vmlinuz", "initrd.img"} | ({"vmlinux"} if guest.info.get("pvh") else set())
        | ({"tools.img"} if guest.info.get("fio") else set()))
    assert load_guest(guest.kernel.parent).info == guest.info


def test_a_guest_that_says_it_failed_is_believed(scratch: Path) -> None:
    """A disk the guest cannot mount: its 'KVMLAB error=mount' ends the wait at once."""
    from kvmlab.errors import GuestFailed
    blank = images.create(scratch / "blank.raw", 32 << 20)
    with Machine(blank, accel="tcg", disk_format="raw") as vm:
        # GuestFailed, not the WaitTimeout the wait's 120 s would end in
        with pytest.raises(GuestFailed, match="the guest failed: error=mount dev=/dev/vda"):
            vm.wait_guest("ready", timeout=120)


def test_a_guest_that_never_boots_is_reported_with_qemus_exit(guest: Guest, disk: Path,
                                                                tmp_path: Path) -> None:
    import json as _json

    from kvmlab.errors import WaitTimeout
    from kvmlab.guest.build import Guest as G
    from kvmlab.guest.build import file_digest
    d = _broken_guest(guest, tmp_path, "vmlinuz")
    info = _json.loads((d / "guest.json").read_text())
    info["files_sha256"]["vmlinuz"] = file_digest(d / "vmlinuz")    # a guest built broken
    broken = G(d / "vmlinuz", d / "initrd.img", info)
    vm = Machine(disk, accel="tcg", guest=broken, saved_boot=False)   # its own boot fails
    try:
        vm.launch()
        with pytest.raises((WaitTimeout, LaunchError)) as err:
            vm.wait_guest("boot", timeout=60)
    except LaunchError as launch:
        msg = str(launch)
    else:
        msg = str(err.value)
    finally:
        vm.shutdown()

    assert "QEMU exited" in msg and "the guest never booted" in msg, msg


def test_a_vm_resumes_its_shapes_saved_boot_with_its_own_parameters(scratch: Path) -> None:
    """Two workload VMs of one shape on disks of their own: the second (at least) resumes
    the saved boot; each guest runs its own parameters on its own disk and writes its own
    random data (a seed each)."""
    from kvmlab.guest.workload import Workload
    sums, resumed = [], []
    for k in range(2):
        d = scratch / f"w{k}.qcow2"
        images.make_guest_disk(d, 32, fill_mib=0)
        with Machine(d, accel="tcg", mode="workload", saved_boot=True,
                     workload=Workload(dd_kib=64 * (k + 1), rate_kib_s=512)) as vm:
            op = vm.wait_ops(1, "dd", after=0.0, timeout=60)[0]
            resumed.append(vm.resumed_from)
            assert "-incoming" in vm.command or vm.resumed_from is None
        assert int(op.data["size"]) == 64 * 1024 * (k + 1)      # its own parameters
        sums.append(op.data["sha256"])
    assert resumed[1] is not None and resumed[1].is_file()
    assert sums[0] != sums[1]


def test_a_damaged_saved_boot_is_booted_past_and_removed(disk: Path, scratch: Path) -> None:
    # a shape of this test's own (320 MiB): other workers' VMs resume theirs meanwhile
    with Machine(disk, accel="tcg", memory_mib=320, saved_boot=True) as vm:
        vm.wait_guest("ready", timeout=60)
    state = vm.resumed_from
    assert state is not None
    cut = state.with_name(state.name + ".cut")
    cut.write_bytes(state.read_bytes()[: 1 << 20])             # cut short
    cut.replace(state)
    with Machine(disk, accel="tcg", memory_mib=320, saved_boot=True) as vm:
        vm.wait_guest("ready", timeout=60)                      # booted instead
        assert vm.resumed_from is None and "-incoming" not in vm.command
    assert not state.exists()
    # and never when asked not to
    with Machine(disk, accel="tcg", memory_mib=320, saved_boot=False) as vm:
        vm.wait_guest("ready", timeout=60)
        assert vm.resumed_from is None
