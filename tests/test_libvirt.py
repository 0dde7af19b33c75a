"""The libvirt backend against a real libvirtd (started by 'make test'): bad input, the seed's
HMP lines, and E1/E3/E4 with the same verdicts as through QMP."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab import experiments as ex
from kvmlab.analysis import causes
from kvmlab.backends.libvirt import LibvirtBackend
from kvmlab.errors import BackendError, BadInput
from kvmlab.experiments.options import RunOptions
from kvmlab.live.jobs import job_for
from kvmlab.live.record import COLUMNS
from kvmlab.qemu import images
from kvmlab.vm.libvirt_lab import LibvirtMachine

# integration: real QEMU and the guest; the leak check counts every kvmlab domain of the
# host's libvirtd, so every test that makes one runs in one worker
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("libvirt")]

URI = "qemu:///system"


def kvmlab_domains() -> set[str]:
    out = subprocess.run(["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True,
                         text=True, check=True).stdout
    return {n for n in out.split() if n.startswith("kvmlab")}


@pytest.fixture(autouse=True)
def libvirtd_running() -> Iterator[None]:
    """libvirtd must answer (no skip); and no kvmlab domain may outlive a test."""
    res = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, text=True)
    assert res.returncode == 0, f"libvirtd not running (tools/libvirt-up.sh): {res.stderr}"
    before = kvmlab_domains()
    yield
    left = kvmlab_domains() - before
    for name in left:
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
    assert not left, f"libvirt domains left behind: {left}"


def test_bad_uri_domain_and_disk(scratch: Path) -> None:
    with pytest.raises(BackendError, match="cannot connect to nosuch:///x") as info:
        LibvirtBackend("nosuch:///x", "vm")
    assert "\n" not in str(info.value)
    with pytest.raises(BadInput, match="no domain 'kvmlab-none'"):
        LibvirtBackend(URI, "kvmlab-none")
    with pytest.raises(BadInput, match="domain name or UUID"):
        LibvirtBackend(URI, "")
    images.make_guest_disk(scratch / "disk.qcow2", 32)
    with LibvirtMachine(scratch / "disk.qcow2") as vm:
        vm.wait_guest("ready", timeout=60)
        with pytest.raises(BadInput, match="unknown drive 'vdz'"):
            vm.mirror("vdz", scratch / "x.qcow2")
        with pytest.raises(BadInput, match="has no libvirt blockCopy"):
            vm.mirror("vda", scratch / "x.qcow2", sync="none")
        assert not (scratch / "x.qcow2").exists()
        # the same domain by UUID
        be = LibvirtBackend(URI, vm.backend.dom.UUIDString())  # type: ignore[attr-defined]
        assert be.disks() == ["vda"]
        be.close()


def test_domain_not_running(scratch: Path, guest: object) -> None:
    images.make_guest_disk(scratch / "disk.qcow2", 32)
    vm = LibvirtMachine(scratch / "disk.qcow2", name="kvmlab-defined")
    xml = vm.domain_xml(None, scratch / "c.sock")
    import libvirt
    conn = libvirt.open(URI)
    dom = conn.defineXML(xml)
    try:
        with pytest.raises(BadInput, match="is not running"):
            LibvirtBackend(URI, dom.name())
    finally:
        dom.undefine()
        conn.close()


def test_seed_hmp_lines_on_a_libvirt_domain(scratch: Path) -> None:
    src = scratch / "disk.qcow2"
    images.make_guest_disk(src, 32, fill_mib=4)
    m1, m2 = scratch / "x-mirror.img", scratch / "m2.qcow2"
    with LibvirtMachine(src) as vm:
        vm.wait_guest("ready", timeout=60)
        assert "libvirt-" in vm.hmp("info block") and str(src) in vm.hmp("info block")
        since = len(vm.backend.events)
        assert vm.hmp(f"drive_mirror -f drive0 {m1}") == ""
        job = job_for(vm.backend, "vda", since)
        job.wait_ready(60)
        assert "Type mirror" in vm.hmp("info block-jobs")
        vm.hmp("block_job_cancel drive0")
        assert job.wait_done(30).event == "BLOCK_JOB_COMPLETED"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(m2), "32M"], check=True)
        since = len(vm.backend.events)
        vm.hmp(f"drive_mirror -n -f vda {m2}")
        job = job_for(vm.backend, "vda", since)
        job.wait_ready(60)
        vm.hmp("stop")
        assert vm.backend.run_state() == "paused"
        vm.hmp("block_job_complete vda")
        assert job.wait_done(30).event == "BLOCK_JOB_COMPLETED"
        vm.hmp("c")
        assert vm.backend.run_state() == "running"
        assert vm.block_info()[0].file == str(m2)   # libvirt knows about the pivot


def test_recorded_columns_match_qmp(scratch: Path, tmp_path: Path) -> None:
    from kvmlab.live.record import Recorder
    images.make_guest_disk(scratch / "disk.qcow2", 32, fill_mib=8)
    with LibvirtMachine(scratch / "disk.qcow2") as vm:
        vm.wait_guest("ready", timeout=60)
        rec = Recorder(tmp_path / "run", interval=0.02)
        rec.attach_machine(vm)
        with rec:
            job = vm.mirror("vda", scratch / "t.qcow2", speed=4 * 1024 * 1024,
                            buf_size=256 * 1024)
            job.wait_ready(60)
            time.sleep(0.3)   # a few samples in the ready state
            job.cancel()
            job.wait_done(30)
        frames = rec.frames()
    for name, cols in COLUMNS.items():
        assert list(frames[name].columns) == cols
    s = frames["samples"]
    assert len(s) > 20 and set(s.job) == {"vda"} and set(s.type) == {"mirror"}
    assert s.status.isin(["running", "ready"]).all() and s.ready.any()
    ev = frames["events"]
    assert {"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"} <= set(ev.name)
    assert "libvirt:BLOCK_JOB_2" in set(ev.name)


@pytest.mark.parametrize("name", ["E1", "E3", "E4", "E5", "E6"])
def test_seed_experiments_through_libvirt(name: str, opts: RunOptions) -> None:
    kw = dict(image_mib=48, fill_mib=8, options=opts.replace(backend="libvirt", accel="auto"))
    if name == "E1":
        r = ex.mirror_basic(after_ready_s=1.0, **kw)  # type: ignore[arg-type]
        # libvirt's QEMU writes the trace too (qemu:commandline): the same stream as ours
        tr = r.data.trace
        assert (tr["event"] == "mirror_one_iteration").any()
        assert causes.job_trace(tr, r.data.events, "vda")["event"].nunique() >= 3
        assert not list(r.run_path.glob("trace-*.log"))
    elif name == "E3":
        r = ex.commit_stopped(method="hmp", rounds=3, **kw)  # type: ignore[arg-type]
        assert r.verdict["vm_state_during_commit"] == "paused"
        assert r.verdict["drive_after"].endswith("base/base.img")
    elif name == "E4":
        r = ex.pivot(paused=True, **kw)  # type: ignore[arg-type]
        assert r.verdict["on_target"] and r.verdict["source_unchanged_after_pivot"]
    elif name == "E5":
        r = ex.double_pivot(**kw)  # type: ignore[arg-type]
    else:
        r = ex.remove_source(action="delete", **kw)  # type: ignore[arg-type]
    assert r.passed, r.verdict
    assert r.data.meta["backend"] == "libvirt"
    assert r.data.meta["params"]["backend"] == "libvirt"


def test_notebook_parameter_selects_libvirt(tmp_path: Path) -> None:
    import json

    from kvmlab.batch.notebooks import run_notebook
    nb = Path(__file__).resolve().parent.parent / "notebooks" / "01_mirror_basic.ipynb"
    out = run_notebook(nb, {"backend": "libvirt", "image_mib": 48, "fill_mib": 4,
                            "after_ready_s": 0.5}, out=tmp_path / "r")
    meta = json.loads((out / "run.json").read_text())
    assert meta["backend"] == "libvirt" and meta["verdict"]["pass"] is True
    assert meta["machines"]["source"]["backend"] == "libvirt"


def test_killed_owner_domain_is_destroyed_by_the_next_reap(scratch: Path, tmp_path: Path) -> None:
    """libvirtd's QEMU is not our child, so pdeathsig cannot take it with a killed kvmlab:
    the lab VM's temp dir says how to stop it, and the next reap does."""
    import os
    import signal
    import sys

    from kvmlab.store.tmpdirs import reap_stale_tmpdirs
    disk = scratch / "disk.qcow2"
    images.make_guest_disk(disk, 32)
    script = tmp_path / "child.py"
    script.write_text(
        "import time\n"
        "from kvmlab.vm.libvirt_lab import LibvirtMachine\n"
        f"vm = LibvirtMachine({str(disk)!r})\n"
        "vm.launch()\n"
        "print(vm.domain_name, vm.tmpdir, flush=True)\n"
        "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        name, tmp = child.stdout.readline().split()  # type: ignore[union-attr]
        assert name in kvmlab_domains()
        assert os.stat(tmp).st_mode & 0o777 == 0o700     # private, like the embedded VM's
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert name in kvmlab_domains()                  # nothing could clean up
    assert Path(tmp) in reap_stale_tmpdirs()
    assert name not in kvmlab_domains() and not Path(tmp).exists()


#: the security models of `virsh capabilities` on a host where QEMU runs as libvirt-qemu
CAPS = """<capabilities><host>
<secmodel><model>apparmor</model><doi>0</doi></secmodel>
<secmodel><model>dac</model><doi>0</doi>
<baselabel type='kvm'>+64055:+994</baselabel><baselabel type='qemu'>+64055:+994</baselabel>
</secmodel></host></capabilities>"""


def test_qemu_dac_uid_from_capabilities() -> None:
    from kvmlab.vm.libvirt_lab import qemu_dac_uid
    assert qemu_dac_uid(CAPS) == 64055
    assert qemu_dac_uid(CAPS.replace("+64055:+994", "+0:+0")) == 0
    assert qemu_dac_uid("<capabilities><host/></capabilities>") is None


def test_storage_migration_through_libvirt(opts: RunOptions) -> None:
    """libvirt will not migrate a domain to its own host: its part of the flow is blockCopy
    of every disk into the destination's NBD exports (a network disk each), READY, and
    the disks cut at one point and verified."""
    r = ex.storage_migration(data_disks=1, image_mib=48, fill_mib=8, ready_s=0.5,
                             options=opts.replace(backend="libvirt", accel="auto"))
    v = r.verdict
    assert r.passed and v["outcome"] == "mirrored and cut", v
    assert v["migration_status"] == "not run (libvirt)" and v["jobs_completed"]
    assert v["verify_pass"] and v["checked"] >= 3 and v["disks"] == 2
    assert r.data.meta["backend"] == "libvirt"
    assert set(r.data.samples["job"]) == {"vda", "vdb"}
