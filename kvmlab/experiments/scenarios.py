"""The scenario catalogue: mirror scenarios from QEMU's QE suites, run on this build and judged.

Each :class:`Scenario` names its kind, its **anchor** (the tp-qemu cfg or iotest case it
corresponds to), and what that suite or QEMU's documentation expects.  :func:`scenario` runs
one on a busy lab VM and records it like any experiment; what happened (how the job ended,
QEMU's events and errors in its own words, the guest's I/O errors, whether the copy or the
VM verifies) goes into the verdict as *observed* fields, and :func:`judge` decides from those
fields alone whether QEMU did what the anchor expects (pure: tested on recorded runs).

A scenario that cannot run here says why in one line (``ran: false``), never silently.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmlab import marks
from kvmlab.analysis import converge
from kvmlab.errors import BackendError, BadInput, JobDiverging, KvmlabError, WaitTimeout
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    busy_vm,
    synced_manifest,
    verify_image,
)
from kvmlab.experiments.mirror_basic import e1_steps
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.faults import SmallTmpfs
from kvmlab.guest.workload import Manifest, Workload
from kvmlab.live.jobs import Job
from kvmlab.model import JobOutcome
from kvmlab.qemu import images
from kvmlab.qemu.images import make_guest_disk
from kvmlab.units import MIB
from kvmlab.vm.machine import Drive, Machine, data_drive

#: why the catalogue runs on the embedded lab only
SCENARIOS_LIBVIRT = (
    "its scenarios drive QEMU with QMP commands libvirt keeps for itself (set-action, "
    "blockdev-mirror onto named nodes, raw refusals)")

#: the kinds of scenario, in table order
KINDS = ("disks", "lifecycle", "refused", "policy", "verbs", "sync", "target", "device")


@dataclass(frozen=True)
class Scenario:
    """One row of the catalogue.

    :ivar rule: how :func:`judge` reads the observed fields (see :data:`RULES`).
    :ivar expected_error: the words QEMU's refusal should contain, as the anchor asserts
        them (a refused action); empty when the anchor names no text.
    """

    name: str
    kind: str
    anchor: str
    expected: str
    rule: str
    expected_error: str = ""
    run: Callable[[_Ctx], dict[str, Any]] = field(default=lambda c: {}, repr=False,
                                                  compare=False)


# -- the steps every scenario shares ----------------------------------------------------
@dataclass
class _Ctx:
    """A scenario's lab and sizes, and the steps its runner is made of."""

    lab: LabRun
    image_mib: int
    fill_mib: int
    speed: int
    workload: Workload
    after_ready_s: float
    verify: bool
    name: str
    #: when the last cancel's job end arrived (the cut lands between the cancel and this)
    settled: float | None = None

    @property
    def rec(self) -> Any:
        return self.lab.recorder

    def disk(self, name: str = "disk.qcow2", **kw: Any) -> tuple[Path, Manifest]:
        path = self.lab.workdir / name
        return path, make_guest_disk(path, self.image_mib, "qcow2", self.fill_mib, **kw)

    @contextmanager
    def busy(self, disk: Path | Drive, **machine_kw: Any) -> Iterator[Machine]:
        with busy_vm(self.lab, disk, self.workload, label="source", **machine_kw) as vm:
            yield vm

    def mirror(self, vm: Machine, target: Path, **kw: Any) -> Job:
        kw.setdefault("speed", self.speed)
        self.rec.track(target.stem, target)
        self.rec.mark(marks.MIRROR_START, job=vm.disk_id)
        return vm.mirror(vm.disk_id, target, kw.pop("format", None), **kw)

    def ready(self, job: Job, timeout: float = 120) -> float | None:
        """Wait for READY; the host time it came, or None (the job ended or timed out)."""
        try:
            rec = job.wait_ready(timeout)
        except (WaitTimeout, KvmlabError):
            return None
        self.rec.mark(marks.READY_SEEN, job=job.id)
        return rec.mono

    def cancel(self, job: Job, force: bool = False) -> tuple[float, JobOutcome]:
        """``block-job-cancel`` (marked); the cut-off and how the job ended (the time the
        end arrived is :attr:`settled`)."""
        self.rec.mark(marks.CANCEL, job=job.id, force=force)
        t = time.monotonic()
        job.cancel(force=force)
        outcome = job.wait_done(60)
        self.settled = time.monotonic()
        return t, outcome

    @property
    def target(self) -> Path:
        """The mirror's target image in the run's scratch folder."""
        return Path(self.lab.workdir) / TARGET_FILE

    def copy_holds(self, vm: Machine, base: Manifest, until: float | None = None,
                   disk: str = "vda", settled: float | None = None) -> dict[str, Any]:
        """Does the target hold every operation the guest synced on *disk* before *until*
        (and the disk's *base* content)?  Operations begun between *until* and *settled*
        (a cancel's landing) may be there or not.  See :meth:`check_copy`."""
        manifest, _ = synced_manifest(vm, base, until=until, disk=disk, settled=settled)
        return self.check_copy(self.target, manifest)

    def check_copy(self, target: Path, manifest: Manifest) -> dict[str, Any]:
        """Boot *target* in verify mode (unless ``verify`` is off): does it hold *manifest*?"""
        if not self.verify:
            return {"copy_verifies": None}
        got = verify_image(self.lab, target, manifest)
        out = {"copy_verifies": got["verify_pass"], "checked": got["checked"],
               "bad": got["bad"]}
        if got["bad_items"]:            # which paths, so a failed verdict says where
            out["bad_items"] = got["bad_items"][:5]
        return out



def _refusal(fn: Callable[[], Any]) -> str | None:
    """QEMU's refusal of *fn*'s command in its own words, or None if it was accepted."""
    try:
        fn()
    except BackendError as err:
        return str(getattr(err, "reply", None) or err)
    return None


def _job_events(vm: Machine, since: int = 0) -> list[str]:
    """QEMU's block-job and I/O-error event names, in order (the job's story)."""
    return [r.name for r in vm.backend.events.snapshot()[since:]
            if r.name.startswith("BLOCK_JOB_") or r.name == marks.BLOCK_IO_ERROR]


def _io_errors(vm: Machine) -> int:
    """The guest's I/O errors: BLOCK_IO_ERROR events QEMU sent for it."""
    return sum(1 for r in vm.backend.events.snapshot() if r.name == marks.BLOCK_IO_ERROR)


def _ops_after(vm: Machine, t: float, timeout: float = 20) -> int:
    """How many operations the guest completed after host time *t* (waiting for one)."""
    try:
        return len(vm.wait_ops(1, None, after=t, timeout=timeout))
    except WaitTimeout:
        return 0


def _node_of(vm: Machine, filename: Path) -> str | None:
    """The node name QEMU gave the format node of image *filename*."""
    for n in vm.qmp("query-named-block-nodes"):
        if n.get("file") == str(filename) and n.get("drv") != "file":
            return str(n["node-name"])
    return None


TARGET_NODE = "kvmlab-target"
#: the target image's name in the run's scratch folder
TARGET_FILE = "x-mirror.img"


def _blockdev_mirror(c: _Ctx, vm: Machine, target: Path, extra: dict[str, Any]) -> Job:
    """``blockdev-mirror`` of the first disk onto *target*, created at the disk's size and
    added as node :data:`TARGET_NODE` (as tp-qemu's blockdev cases do)."""
    size = int(images.info(Path(vm.drives[0].path))["virtual-size"])
    images.create(target, size, "qcow2")
    c.rec.track(target.stem, target)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": TARGET_NODE,
                              "file": {"driver": "file", "filename": str(target)}})
    since = len(vm.backend.events)
    c.rec.mark(marks.MIRROR_START, job=vm.disk_id)
    try:
        vm.qmp("blockdev-mirror", {"job-id": vm.disk_id, "device": vm.disk_id,
                                     "target": TARGET_NODE, "sync": "full",
                                     "speed": c.speed, **extra})
    except BackendError:
        vm.qmp("blockdev-del", {"node-name": TARGET_NODE})
        raise
    return Job(vm.backend, vm.disk_id, None, since)


def _outcome(o: JobOutcome) -> dict[str, Any]:
    return {"job_end": o.event, "job_error": o.error, "bytes_len": o.len,
            "bytes_offset": o.offset}


# -- the runners --------------------------------------------------------------------------
def _copy_at_ready(c: _Ctx, *, vm_kw: dict[str, Any] | None = None,
                   mirror_kw: dict[str, Any] | None = None,
                   during: Callable[[_Ctx, Machine, Job], dict[str, Any]] | None = None,
                   before: Callable[[_Ctx, Machine], dict[str, Any]] | None = None,
                   disk: tuple[Path | Drive, Manifest] | None = None,
                   blockdev: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mirror, (optionally do something before, or to the running job), READY, cancel,
    verify the copy.  *blockdev*: ``blockdev-mirror`` onto a node added first, with these
    extra arguments, instead of ``drive-mirror``."""
    source, base = disk or c.disk()
    target = c.target
    out: dict[str, Any] = {}
    with c.busy(source, **(vm_kw or {})) as vm:
        since = len(vm.backend.events)
        if before is not None:
            out.update(before(c, vm))
        t0 = time.monotonic()
        job = (c.mirror(vm, target, **(mirror_kw or {})) if blockdev is None
               else _blockdev_mirror(c, vm, target, blockdev))
        if during is not None:
            out.update(during(c, vm, job))
        t_ready = c.ready(job)
        out["ready"] = t_ready is not None
        if t_ready is not None:
            out["time_to_ready_s"] = round(t_ready - t0, 3)
            time.sleep(c.after_ready_s)
            t_cut, outcome = c.cancel(job)
        else:
            t_cut = time.monotonic()
            outcome = job.wait_done(5) if job.ended else c.cancel(job, force=True)[1]
        out.update(_outcome(outcome))
        out["guest_ops_after_cut"] = _ops_after(vm, t_cut, timeout=5)
        out["events"] = _job_events(vm, since)
        out["guest_io_errors"] = _io_errors(vm)
        if blockdev is not None:                  # release the target before it is booted
            vm.qmp("blockdev-del", {"node-name": TARGET_NODE})
    fs = images.file_size(target)
    out["target_allocated"] = fs.allocated if fs else None
    if out["ready"]:
        out.update(c.copy_holds(vm, base, until=t_cut, settled=c.settled))
    return out


def _refused(action: str) -> Callable[[_Ctx], dict[str, Any]]:
    """A runner: while the mirror runs (before READY), try *action*; QEMU must refuse it,
    the job must go on to READY and a copy that verifies, the guest must keep working."""
    def during(c: _Ctx, vm: Machine, job: Job) -> dict[str, Any]:
        time.sleep(0.3)
        t = time.monotonic()
        c.rec.mark(marks.SCENARIO_ACTION, action=action)
        err = _refusal(lambda: _ACTIONS[action](c, vm, job))
        running = job.ended is None
        return {"action": action, "refused": err is not None, "qemu_error": err,
                "job_running_after": running, "guest_ops_after_action": _ops_after(vm, t)}

    def before(c: _Ctx, vm: Machine) -> dict[str, Any]:
        t = time.monotonic()
        c.rec.mark(marks.SCENARIO_ACTION, action=action)
        err = _refusal(lambda: _BEFORE_JOB[action](c, vm))
        return {"action": action, "refused": err is not None, "qemu_error": err,
                "job_running_after": None, "guest_ops_after_action": _ops_after(vm, t)}

    def run(c: _Ctx) -> dict[str, Any]:
        disk = None
        if action == "commit":                  # a chain, so a commit would have work to do
            base_path, base = c.disk("base.qcow2")
            top = images.create_overlay(c.lab.workdir / "disk.qcow2", base_path)
            disk = (top, base)
        if action in _BEFORE_JOB:
            return _copy_at_ready(c, before=before, disk=disk)
        return _copy_at_ready(c, during=during, disk=disk,
                              mirror_kw={"speed": min(c.speed, 4 * MIB)},
                              blockdev={} if action == "del_target" else None)
    return run


def _second_mirror(c: _Ctx, vm: Machine, job: Job) -> Any:
    return vm.qmp("drive-mirror", {"device": vm.disk_id, "job-id": "second",
                                     "target": str(c.lab.workdir / "second.img"),
                                     "sync": "full", "format": "qcow2"})


def _resize(c: _Ctx, vm: Machine, job: Job) -> Any:
    return vm.qmp("block_resize", {"device": vm.disk_id, "size": 2 * c.image_mib * MIB})


def _snapshot(c: _Ctx, vm: Machine, job: Job) -> Any:
    return vm.qmp("blockdev-snapshot-sync", {
        "device": vm.disk_id, "snapshot-file": str(c.lab.workdir / "snap.qcow2"),
        "format": "qcow2"})


def _commit(c: _Ctx, vm: Machine, job: Job) -> Any:
    return vm.qmp("block-commit", {"device": vm.disk_id, "job-id": "commit0"})


def _del_target(c: _Ctx, vm: Machine, job: Job) -> Any:
    return vm.qmp("blockdev-del", {"node-name": TARGET_NODE})


def _same_target(c: _Ctx, vm: Machine) -> Any:
    """``blockdev-mirror`` of the disk onto its own node (before any job runs, as tp-qemu)."""
    node = _node_of(vm, Path(vm.drives[0].path))
    if node is None:
        raise BadInput("the source's node is not in query-named-block-nodes")
    return vm.qmp("blockdev-mirror", {"device": vm.disk_id, "job-id": "self",
                                        "target": node, "sync": "full"})


def _in_transaction(c: _Ctx, vm: Machine, job: Job) -> Any:
    return vm.qmp("transaction", {"actions": [{"type": "drive-mirror", "data": {
        "device": vm.disk_id, "target": str(c.lab.workdir / "tx.img"), "sync": "full"}}]})


def _complete_early(c: _Ctx, vm: Machine, job: Job) -> Any:
    return vm.qmp("block-job-complete", {"device": job.id})


_ACTIONS: dict[str, Callable[[_Ctx, Machine, Job], Any]] = {
    "second_mirror": _second_mirror, "resize": _resize, "snapshot": _snapshot,
    "commit": _commit, "del_target": _del_target,
    "transaction": _in_transaction, "complete_early": _complete_early,
}
#: refused actions tried before the mirror starts (the job then runs as usual)
_BEFORE_JOB: dict[str, Callable[[_Ctx, Machine], Any]] = {"same_target": _same_target}


def _disks_at_once(c: _Ctx) -> dict[str, Any]:
    """E1 on three disks, every copy cut at one point (the VM stopped around the cancels)."""
    v = e1_steps(c.lab, image_mib=c.image_mib, fill_mib=c.fill_mib, disk_format="qcow2",
                 workload_kib=c.workload.dd_kib, workload_rate_kib_s=c.workload.rate_kib_s,
                 speed=c.speed, sync="full", target_format=None, granularity=None,
                 buf_size=None, after_ready_s=c.after_ready_s, ready_timeout=120,
                 data_disks=2, data_mib=32)
    disks = v.get("disks") or []
    return {"ready": v.get("ready"), "job_end": v.get("job_end"), "disks": disks,
            "jobs_completed": sum(d["job_end"] == marks.BLOCK_JOB_COMPLETED for d in disks),
            "copy_verifies": all(d["verify_pass"] for d in disks) if disks else False,
            "same_point": bool(v.get("same_point")), "cut_stopped_s": v.get("cut_stopped_s"),
            "start_stopped_s": v.get("start_stopped_s")}


def _reboot(after_ready: bool, by_guest: bool) -> Callable[[_Ctx], dict[str, Any]]:
    """A runner: the VM reboots before or after READY, either reset by the host (QMP
    ``system_reset``, tp-qemu's method) or by the guest itself (its own ``shutdown -r``,
    started through the guest agent: it syncs its disks, then reboots the kernel).  The
    job goes on and the copy verifies."""
    action = "guest shutdown -r" if by_guest else "system_reset"

    def during(c: _Ctx, vm: Machine, job: Job) -> dict[str, Any]:
        vm.qmp("set-action", {"reboot": "reset"})    # else -no-reboot makes a reset a quit
        agent = vm.agent() if by_guest else None
        if after_ready and c.ready(job) is None:
            return {"reset_at": "never ready"}
        if not after_ready:
            time.sleep(0.3)
        at = "ready" if job.is_ready else "running"
        booted = sum(1 for r in vm.console.records.snapshot() if r.name == "boot")
        c.rec.mark(marks.SCENARIO_ACTION, action=action)
        t = time.monotonic()
        if agent is not None:
            agent.reboot()
        else:
            vm.qmp("system_reset")
        try:
            deadline = time.monotonic() + 60
            while sum(1 for r in vm.console.records.snapshot() if r.name == "boot") <= booted:
                if time.monotonic() > deadline:
                    raise WaitTimeout("the guest did not boot again after the reboot")
                time.sleep(0.1)
            rebooted = True
        except WaitTimeout:
            rebooted = False
        out = {"reset_at": at, "rebooted": rebooted, "job_running_after": job.ended is None,
               "guest_ops_after_action": _ops_after(vm, t, timeout=30)}
        if by_guest:
            out["guest_shutdown_said"] = any(r.name == "shutdown"
                                             for r in vm.console.records.snapshot())
        return out

    def run(c: _Ctx) -> dict[str, Any]:
        speed = c.speed if after_ready else min(c.speed, 2 * MIB)
        return _copy_at_ready(c, during=during, mirror_kw={"speed": speed},
                              vm_kw={"agent": True} if by_guest else None)
    return run


def _poweroff_at_ready(c: _Ctx) -> dict[str, Any]:
    """The guest shuts itself down (``poweroff``) while the job is READY: QEMU exits; what
    became of the job, and is the target a usable copy of the disk as the guest left it?"""
    source, base = c.disk()
    target = c.target
    wl = Workload(dd_kib=c.workload.dd_kib, rate_kib_s=c.workload.rate_kib_s,
                  duration_s=6, poweroff=True)
    out: dict[str, Any] = {}
    with busy_vm(c.lab, source, wl, label="source") as vm:
        since = len(vm.backend.events)
        job = c.mirror(vm, target, speed=0)
        out["ready"] = c.ready(job, timeout=30) is not None
        out["ready_before_poweroff"] = out["ready"] and not any(
            r.name == "poweroff" for r in vm.console.records.snapshot())
        code = vm.wait_exit(60)
        out["qemu_exit"] = code
        out["events"] = _job_events(vm, since)
        end = [e for e in out["events"] if e in marks.JOB_ENDED]
        out["job_end"] = end[0] if end else "none (QEMU exited)"
        out["guest_io_errors"] = _io_errors(vm)
    out.update(c.copy_holds(vm, base))
    return out


def _cancel(at_ready: bool) -> Callable[[_Ctx], dict[str, Any]]:
    """A runner: ``block-job-cancel`` before READY (the job ends CANCELLED, the target is a
    partial copy), or ``force`` after READY (CANCELLED, not COMPLETED)."""
    def run(c: _Ctx) -> dict[str, Any]:
        source, base = c.disk()
        with c.busy(source) as vm:
            since = len(vm.backend.events)
            job = c.mirror(vm, c.target, speed=c.speed if at_ready else 2 * MIB)
            if at_ready:
                ready = c.ready(job) is not None
                time.sleep(c.after_ready_s if ready else 0)
            else:
                time.sleep(1.0)
                ready = job.is_ready
            t_cut, outcome = c.cancel(job, force=at_ready)
            out = {"ready": ready, **_outcome(outcome), "events": _job_events(vm, since),
                   "guest_io_errors": _io_errors(vm),
                   "guest_ops_after_cut": _ops_after(vm, t_cut, timeout=10)}
        if not at_ready:
            out["copied_fraction"] = round(outcome.offset / outcome.len, 3) if outcome.len \
                else None
            fs = images.file_size(c.target)
            out["target_allocated"] = fs.allocated if fs else None
        out.update(c.copy_holds(vm, base, until=t_cut, settled=c.settled))
        return out
    return run


def _sync_none(c: _Ctx) -> dict[str, Any]:
    """``sync=none``: only writes made after the start reach the target."""
    out = _copy_at_ready(c, mirror_kw={"sync": "none"}, disk=None)
    out.pop("copy_verifies", None)                    # not a disk on its own: nothing to boot
    out.pop("checked", None)
    out.pop("bad", None)
    out["copy_verifies"] = None
    out["fill_bytes"] = c.fill_mib * MIB
    return out


def _sync_top(c: _Ctx) -> dict[str, Any]:
    """``sync=top`` over a backing file: the overlay's data is copied, the base's is not;
    the copy keeps the base as its backing file and verifies."""
    base_path, base = c.disk("base.qcow2")
    top = images.create_overlay(c.lab.workdir / "disk.qcow2", base_path)
    out = _copy_at_ready(c, mirror_kw={"sync": "top"}, disk=(top, base))
    out["fill_bytes"] = c.fill_mib * MIB
    return out


def _target(fmt: str, existing: bool = False, unmap: bool | None = None,
            discard: str = "ignore") -> Callable[[_Ctx], dict[str, Any]]:
    """A runner: a mirror into a *fmt* target (new, or an existing one full of old data,
    with *unmap*; the source drive's *discard*): what the host stored, and whether the
    copy verifies."""
    def run(c: _Ctx) -> dict[str, Any]:
        source, base = c.disk()
        target = c.target
        size = int(images.info(source)["virtual-size"])
        kw: dict[str, Any] = {"format": fmt}
        if existing:
            images.create(target, size, fmt)
            with open(target, "r+b") as fh:              # old data where the source has none
                block = b"\xa5" * MIB
                for _ in range(size // MIB):
                    fh.write(block)
            kw["mode"] = "existing"
        if unmap is not None:
            kw["unmap"] = unmap
        disk: Path | Drive = source if discard == "ignore" else \
            Drive(source, "drive0", "qcow2", c.lab.options.cache, discard=discard)
        out = _copy_at_ready(c, mirror_kw=kw, disk=(disk, base))
        out["discard"] = discard
        fs = images.file_size(source)
        out["source_allocated"] = fs.allocated if fs else None
        out["virtual_size"] = size
        out["unmap"] = unmap
        return out
    return run


def _iothread(c: _Ctx) -> dict[str, Any]:
    """The source disk's device runs in an iothread of its own."""
    source, base = c.disk()
    drive = Drive(source, "drive0", "qcow2", c.lab.options.cache, iothread=True)
    return _copy_at_ready(c, disk=(drive, base))


def _filter_node(c: _Ctx) -> dict[str, Any]:
    """``filter-node-name``: the mirror's filter node has the name given while the job
    runs, and is gone once it ends."""
    def during(c: _Ctx, vm: Machine, job: Job) -> dict[str, Any]:
        names = {n.get("node-name") for n in vm.qmp("query-named-block-nodes")}
        return {"filter_node_seen": FILTER_NODE in names}

    return _copy_at_ready(c, during=during, blockdev={"filter-node-name": FILTER_NODE})


def _readonly(c: _Ctx) -> dict[str, Any]:
    """A read-only source disk (``readonly=on``): the mirror copies it; after
    ``block-job-complete`` the drive runs on the target, still read-only."""
    source, base = c.disk()
    target = c.target
    drive = Drive(source, "drive0", "qcow2", c.lab.options.cache, read_only=True)
    out: dict[str, Any] = {}
    with c.lab.machine(drive, "source", mode="idle") as vm:
        c.lab.note_machine(vm, "source")
        vm.wait_guest("boot", timeout=60)
        since = len(vm.backend.events)
        job = c.mirror(vm, target)
        out["ready"] = c.ready(job) is not None
        if out["ready"]:
            c.rec.mark(marks.COMPLETE, job=job.id)
            job.complete()
        else:
            job.cancel(force=True)
        out.update(_outcome(job.wait_done(60)))
        blk: dict[str, Any] = next(
            (b for b in vm.qmp("query-block") if b.get("device") == vm.disk_id), {})
        inserted = blk.get("inserted") or {}
        out["now_on"] = Path(str(inserted.get("file", ""))).name
        out["still_read_only"] = bool(inserted.get("ro"))
        out["events"] = _job_events(vm, since)
        out["guest_io_errors"] = _io_errors(vm)
    out.update(c.check_copy(target, base))
    return out


def _source_enospc(policy: str) -> Callable[[_Ctx], dict[str, Any]]:
    """A runner: the source image sits on a small tmpfs and the guest fills it (ENOSPC on
    the source, as tp-qemu's ``src_no_space``), the mirror running with
    ``on-source-error=policy``: what the guest sees, what the job does, the copy."""
    def run(c: _Ctx) -> dict[str, Any]:
        made, base = c.disk()
        target = c.target
        room = -(-made.stat().st_size // MIB) + 6         # the image, then 6 MiB to fill
        wl = Workload(dd_kib=512, rate_kib_s=4096)
        out: dict[str, Any] = {"on_source_error": policy}
        with SmallTmpfs(room, mark=c.rec.mark) as fs:
            source = fs / "disk.qcow2"
            shutil.copyfile(made, source)
            drive = Drive(source, "drive0", "qcow2", "writeback")   # tmpfs has no O_DIRECT
            with busy_vm(c.lab, drive, wl, label="source") as vm:
                since = len(vm.backend.events)
                job = c.mirror(vm, target, on_source_error=policy)
                try:
                    err = vm.backend.events.wait(marks.BLOCK_IO_ERROR, since=since, timeout=60)
                    out["io_error_reason"] = err.data.get("reason")
                    out["io_error_action"] = err.data.get("action")
                    out["io_error_nospace"] = err.data.get("nospace")
                    t_err = err.mono
                except WaitTimeout:
                    t_err = time.monotonic()
                out["vm_status"] = vm.backend.run_state()
                t_ready = c.ready(job, timeout=60)
                out["ready"] = t_ready is not None
                t_cut, outcome = c.cancel(job, force=t_ready is None)
                out.update(_outcome(outcome))
                out["events"] = _job_events(vm, since)
                out["guest_io_errors"] = _io_errors(vm)
            if out["ready"]:
                out.update(c.copy_holds(vm, base, until=min(t_err, t_cut)))
        return out
    return run


def _unplug(blockdev: bool) -> Callable[[_Ctx], dict[str, Any]]:
    """A runner: ``device_del`` of a data disk's device while its mirror runs (the guest's
    ACPI hot-unplug), the disk a ``-blockdev`` node (as libvirt and tp-qemu) or a
    ``-drive``: what becomes of the job, deleting the disk's node, and the copy."""
    return lambda c: _unplug_data_disk(c, blockdev)


def _unplug_data_disk(c: _Ctx, blockdev: bool) -> dict[str, Any]:
    source, _ = c.disk()
    drive, base = data_drive(c.lab.workdir, 1, fill_mib=max(1, c.fill_mib // 2),
                             cache=c.lab.options.cache, blockdev=blockdev)
    data_path = Path(drive.path)
    target = c.target
    out: dict[str, Any] = {}
    with c.busy(source, extra_drives=[drive]) as vm:
        vm.wait_ops(1, "dd", after=0.0, timeout=60)
        since = len(vm.backend.events)
        c.rec.track(target.stem, target)
        c.rec.mark(marks.MIRROR_START, job=drive.id)
        job = vm.mirror(drive.id, target, speed=min(c.speed, 2 * MIB), job_id=drive.id)
        time.sleep(0.3)
        node = drive.id if blockdev else _node_of(vm, data_path)
        c.rec.mark(marks.SCENARIO_ACTION, action="device_del")
        t_unplug = time.monotonic()
        vm.qmp("device_del", {"id": "vd1"})
        try:
            vm.backend.events.wait("DEVICE_DELETED", {"device": "vd1"}, since=since, timeout=30)
            out["unplugged"] = True
        except WaitTimeout:
            out["unplugged"] = False
        out["job_running_after"] = job.ended is None
        out["still_in_query_block"] = any(b.get("device") == drive.id
                                          for b in vm.qmp("query-block"))
        out["qemu_error"] = _refusal(lambda: vm.qmp("blockdev-del", {"node-name": node}))
        out["guest_ops_after_action"] = _ops_after(vm, t_unplug)
        t_ready = c.ready(job) if job.ended is None else None
        out["ready"] = t_ready is not None
        outcome = c.cancel(job)[1] if t_ready is not None else \
            c.cancel(job, force=True)[1] if job.ended is None else job.wait_done(5)
        out.update(_outcome(outcome))
        out["copied_fraction"] = round(outcome.offset / outcome.len, 3) if outcome.len else None
        out["events"] = _job_events(vm, since)
        out["guest_io_errors"] = _io_errors(vm)
    if out["ready"]:
        out.update(c.copy_holds(vm, base, until=t_unplug, disk="vdb"))
    return out


#: the stress scenario's speed limit: a guest writing faster can keep the job from READY
STRESS_LIMIT_MIB_S = 2.0


def _stress(c: _Ctx) -> dict[str, Any]:
    """The guest writes as fast as it can under a modest speed limit: the job converges, or
    the convergence predictor says it will not before the wait runs out."""
    source, base = c.disk()
    target = c.target
    wl = Workload(dd_kib=1024, rate_kib_s=64 * 1024)        # no pause to speak of
    out: dict[str, Any] = {}
    with busy_vm(c.lab, source, wl, label="source") as vm:
        since = len(vm.backend.events)
        t0 = time.monotonic()
        job = c.mirror(vm, target, speed=int(STRESS_LIMIT_MIB_S * MIB))
        try:
            job.wait_ready(90, give_up_when="diverging", mark=c.rec.mark,
                           predictor=converge.Predictor())
            out["outcome"] = "converged"
        except JobDiverging:
            out["outcome"] = "said diverging"
        except WaitTimeout:
            out["outcome"] = "no verdict"
        out["decided_after_s"] = round(time.monotonic() - t0, 1)
        out["ready"] = job.is_ready
        t_cut, outcome = c.cancel(job, force=not job.is_ready)
        out.update(_outcome(outcome))
        rate = [r for r in vm.guest_ops(since=t0, until=t_cut) if r.data.get("op") == "dd"]
        out["guest_wrote_mib_s"] = round(sum(int(r.data.get("size", 0)) for r in rate) / MIB
                                         / max(t_cut - t0, 1e-3), 2)
        out["events"] = _job_events(vm, since)
        out["guest_io_errors"] = _io_errors(vm)
    if out["ready"]:
        out.update(c.copy_holds(vm, base, until=t_cut, settled=c.settled))
    return out


FILTER_NODE = "kvmlab-mirror-top"

#: the catalogue, in table order (kind, then name)
SCENARIO_LIST: tuple[Scenario, ...] = (
    Scenario("disks_at_once", "disks", "tp-qemu blockdev_mirror_multiple_blocks; iotest 041 "
             "(several mirrors); QAPI TransactionAction",
             "every disk mirrored, all started and cut at one point; QEMU's transaction has "
             "no mirror action, so the VM is stopped around the starts and around the cancels",
             "same_point", run=_disks_at_once),
    Scenario("reset_before_ready", "lifecycle",
             "tp-qemu blockdev_mirror_vm_reboot (its reboot is system_reset)",
             "the VM reboots during the mirror; the job goes on, the copy holds the data",
             "job_survives", run=_reboot(after_ready=False, by_guest=False)),
    Scenario("reset_after_ready", "lifecycle",
             "tp-qemu blockdev_mirror_vm_reboot (its reboot is system_reset)",
             "the VM reboots while the job is READY; the job stays READY, the copy verifies",
             "job_survives", run=_reboot(after_ready=True, by_guest=False)),
    Scenario("guest_reboot_before_ready", "lifecycle",
             "tp-qemu drive_mirror_reboot with reboot_method=shell (the guest's own reboot)",
             "the guest reboots itself during the mirror (it syncs, then restarts its "
             "kernel); the job goes on, the copy holds every synced write",
             "job_survives", run=_reboot(after_ready=False, by_guest=True)),
    Scenario("guest_reboot_after_ready", "lifecycle",
             "tp-qemu drive_mirror_reboot with reboot_method=shell (the guest's own reboot)",
             "the guest reboots itself while the job is READY; the job stays READY, the "
             "copy verifies", "job_survives", run=_reboot(after_ready=True, by_guest=True)),
    Scenario("unplug_data_disk", "lifecycle", "tp-qemu blockdev_mirror_hotunplug",
             "device_del of a -blockdev disk under a running mirror: the device goes, the "
             "job goes on; deleting the disk's node is refused while the job holds it",
             "unplug", "is busy: block device is in use by block job: mirror",
             run=_unplug(blockdev=True)),
    Scenario("unplug_drive_disk", "lifecycle",
             "tp-qemu blockdev_mirror_hotunplug, with -drive instead of -blockdev",
             "device_del of a -drive disk under a running mirror: QEMU deletes the drive "
             "with its device and cancels its jobs (blockdev_auto_del); tp-qemu's "
             "-blockdev disks keep theirs", "unplug_cancels", run=_unplug(blockdev=False)),
    Scenario("stress", "lifecycle", "tp-qemu blockdev_mirror_stress",
             "the guest writes as hard as it can: the job converges, or the convergence "
             "predictor says it will not", "stress", run=_stress),
    Scenario("poweroff_at_ready", "lifecycle", "tp-qemu blockdev_mirror_ready_vm_down",
             "the guest powers off at READY: since QEMU 6.2 the job is cancelled "
             "(BLOCK_JOB_CANCELLED), before that it completed", "poweroff",
             run=_poweroff_at_ready),
    *(Scenario(f"refuse_{a}", "refused", anchor, "QEMU refuses the command while the mirror "
               "runs; the job and the guest go on unharmed", "refused", err, run=_refused(a))
      for a, anchor, err in (
          ("second_mirror", "tp-qemu blockdev_mirror_forbidden_actions (mirror)",
           "Need a root block node"),
          ("resize", "tp-qemu blockdev_mirror_forbidden_actions (resize)", "is in use"),
          ("snapshot", "tp-qemu blockdev_mirror_forbidden_actions (snapshot)",
           "is busy: block device is in use by block job: mirror"),
          ("commit", "tp-qemu blockdev_mirror_forbidden_actions (commit)",
           "Need a root block node"),
          ("del_target", "tp-qemu blockdev_mirror_hotunplug (it asserts 'is busy: block "
           "device is in use by block job: mirror' for the source's nodes)", "is in use"),
          ("same_target", "tp-qemu blockdev_mirror_same_src_tgt",
           "Can't mirror node into itself"),
          ("transaction", "QAPI TransactionAction (no mirror action)", "drive-mirror"),
          ("complete_early", "tp-qemu blockdev_mirror_complete_running_job; iotest 041",
           "cannot accept command verb 'complete'"),
      )),
    *(Scenario(f"source_enospc_{p}", "policy", "tp-qemu blockdev_mirror_src_no_space",
               f"the source's file system fills (on-source-error={p}): the guest gets "
               "BLOCK_IO_ERROR 'No space left on device'; the job is not failed by it (a "
               "guest write error, not a read of the mirror) and completes; the copy "
               "verifies", "source_enospc", "No space left on device",
               run=_source_enospc(p))
      for p in ("report", "stop", "ignore")),
    Scenario("cancel_running", "verbs", "tp-qemu blockdev_mirror_cancel_running_job",
             "cancel before READY: BLOCK_JOB_CANCELLED; the target holds part of the disk "
             "and is not a usable copy", "cancelled_partial", run=_cancel(at_ready=False)),
    Scenario("force_cancel_ready", "verbs", "QAPI block-job-cancel (force); iotest 041",
             "force cancel after READY: BLOCK_JOB_CANCELLED (not COMPLETED), without the "
             "final sync a plain cancel makes: QEMU promises no point-in-time copy",
             "cancelled_ready", run=_cancel(at_ready=True)),
    Scenario("sync_none", "sync", "tp-qemu blockdev_mirror_sync_none",
             "only writes made after the start reach the target (far less than the disk's "
             "data); the target is not a disk on its own", "sync_none", run=_sync_none),
    Scenario("sync_top", "sync", "tp-qemu blockdev_mirror_sync_top",
             "only the top layer is copied (not the base's data); the copy keeps the base "
             "as backing file and verifies", "sync_top", run=_sync_top),
    Scenario("target_raw", "target", "iotest 041 (raw targets); QAPI drive-mirror format",
             "a raw target: the copy verifies; the host stores about the source's data",
             "sparse", run=_target("raw")),
    Scenario("target_qcow2", "target", "tp-qemu blockdev_mirror_simple",
             "a qcow2 target: the copy verifies; the host stores about the source's data",
             "sparse", run=_target("qcow2")),
    Scenario("existing_unmap", "target", "QAPI drive-mirror unmap (default true)",
             "an existing raw target full of old data, unmap on, the drive letting discards "
             "through (discard=unmap): the copy verifies and the areas the source reads as "
             "zero are unmapped (the target shrinks)", "sparse",
             run=_target("raw", existing=True, unmap=True, discard="unmap")),
    Scenario("existing_unmap_discard_ignore", "target", "QAPI drive-mirror unmap (default true)",
             "the same with the drive's discard at QEMU's default (ignore): the copy "
             "verifies; how much of the target stays allocated is what the build does "
             "(recorded: 7.2 unmaps the zero areas anyway, 10.0 leaves them)", "allocation",
             run=_target("raw", existing=True, unmap=True)),
    Scenario("existing_no_unmap", "target", "QAPI drive-mirror unmap=false",
             "the same with unmap off: the copy verifies, zero areas are written as zeroes "
             "(the target stays allocated)", "zeroes_written",
             run=_target("raw", existing=True, unmap=False)),
    Scenario("iothread", "device", "tp-qemu blockdev_mirror_simple (iothread variants)",
             "a disk in its own iothread mirrors like any other: the copy verifies", "copy",
             run=_iothread),
    Scenario("filter_node", "device", "tp-qemu blockdev_mirror_filternode",
             "the filter node carries the given name while the job runs; the copy "
             "verifies", "filter_node", run=_filter_node),
    Scenario("readonly_source", "device", "tp-qemu blockdev_mirror_readonly",
             "a read-only disk mirrors; after complete the drive runs on the target, still "
             "read-only", "readonly", run=_readonly),
)
SCENARIOS: dict[str, Scenario] = {sc.name: sc for sc in SCENARIO_LIST}


# -- the judge (pure) -----------------------------------------------------------------------
def _completed(o: dict[str, Any]) -> bool:
    return o.get("job_end") == marks.BLOCK_JOB_COMPLETED and not o.get("job_error")


def _copy_ok(o: dict[str, Any]) -> bool:
    """The copy verified (or verification was off: then only the job's end counts)."""
    return o.get("copy_verifies") is not False


def _rule_copy(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("ready"):
        return False, "the job never became READY"
    if not _completed(o):
        return False, f"the job ended {o.get('job_end')} {o.get('job_error') or ''}".strip()
    if not _copy_ok(o):
        return False, "the copy does not hold the guest's synced data"
    return True, "the copy verifies"


def _rule_refused(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("refused"):
        return False, "QEMU accepted the command"
    if sc.expected_error and sc.expected_error not in str(o.get("qemu_error")):
        return False, f"refused, but not in the anchor's words ({sc.expected_error!r})"
    if o.get("job_running_after") is False:       # None: tried before the job started
        return False, "the refusal ended the job"
    if not o.get("guest_ops_after_action"):
        return False, "the guest stopped working after the refusal"
    ok, why = _rule_copy(o, sc)
    return ok, ("refused; the job and the guest went on" if ok else why)


def _rule_job_survives(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    how = "reboot" if "guest_shutdown_said" in o else "reset"
    if o.get("guest_shutdown_said") is False:
        return False, "the guest never ran its shutdown"
    if not o.get("rebooted"):
        return False, f"the guest did not boot again after the {how}"
    if not o.get("job_running_after"):
        return False, f"the job ended at the {how}"
    ok, why = _rule_copy(o, sc)
    return ok, (f"{how} at {o.get('reset_at')}: the job went on, the copy verifies"
                if ok else why)


def _rule_poweroff(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("ready_before_poweroff"):
        return False, "the job was not READY when the guest powered off"
    if o.get("job_end") != marks.BLOCK_JOB_CANCELLED:
        return False, f"the job ended {o.get('job_end')}, not cancelled as since QEMU 6.2"
    return True, ("cancelled at QEMU's exit; the target "
                  + {True: "verifies", False: "does not verify",
                     None: "was not checked"}[o.get("copy_verifies")])


def _rule_cancelled_partial(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if o.get("ready"):
        return False, "the job was READY before the cancel (not the case studied)"
    if o.get("job_end") != marks.BLOCK_JOB_CANCELLED:
        return False, f"the job ended {o.get('job_end')}"
    frac = o.get("copied_fraction")
    if frac is None or frac >= 1:
        return False, "the whole disk was copied"
    return True, f"cancelled with {frac:.0%} copied: a partial target" + (
        ", which does not verify" if o.get("copy_verifies") is False else "")


def _rule_cancelled_ready(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("ready"):
        return False, "the job never became READY"
    if o.get("job_end") != marks.BLOCK_JOB_CANCELLED:
        return False, f"the job ended {o.get('job_end')}, not CANCELLED"
    return True, "CANCELLED; the copy " + {True: "verifies", False: "does not verify",
                                           None: "was not checked"}[o.get("copy_verifies")]


def _rule_sync_none(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not _completed(o):
        return False, f"the job ended {o.get('job_end')}"
    fill, copied = o.get("fill_bytes") or 0, o.get("bytes_len") or 0
    if copied >= fill:
        return False, f"{copied} bytes copied: not less than the disk's {fill} bytes of data"
    return True, f"{copied / MIB:.1f} MiB copied of {fill / MIB:.0f} MiB of data"


def _rule_sync_top(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    ok, why = _rule_copy(o, sc)
    if not ok:
        return ok, why
    fill, copied = o.get("fill_bytes") or 0, o.get("bytes_len") or 0
    if copied >= fill:
        return False, f"{copied} bytes copied: the base's data was copied too"
    return True, f"{copied / MIB:.1f} MiB copied (the base holds {fill / MIB:.0f} MiB); verifies"


def _rule_same_point(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    disks = o.get("disks") or []
    if len(disks) < 2:
        return False, "fewer than two disks were mirrored"
    if o.get("jobs_completed") != len(disks):
        return False, f"{o.get('jobs_completed')} of {len(disks)} jobs completed"
    if not o.get("copy_verifies"):
        return False, "a copy does not verify"
    if not o.get("same_point"):
        return False, "a copy holds writes made after the cut (not one point in time)"
    return True, f"{len(disks)} disks, every copy verifies, all cut at one point"


def _rule_allocation(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    """The copy verifies; what the host stores is recorded, not judged (the builds differ)."""
    ok, why = _rule_copy(o, sc)
    if not ok:
        return ok, why
    tgt, src = o.get("target_allocated"), o.get("source_allocated")
    if tgt is None or src is None:
        return False, "the target's or the source's allocation was not measured"
    return True, f"verifies; target {tgt / MIB:.1f} MiB on the host, source {src / MIB:.1f} MiB"


def _rule_sparse(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    """:func:`_rule_allocation`, and the host stores about what the source holds (within
    25 % and 1 MiB): zero areas are neither copied nor left allocated."""
    ok, why = _rule_allocation(o, sc)
    if ok and o["target_allocated"] > 1.25 * o["source_allocated"] + MIB:
        return False, (f"the target holds {o['target_allocated'] / MIB:.1f} MiB for the "
                       f"source's {o['source_allocated'] / MIB:.1f}")
    return ok, why


def _rule_zeroes_written(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    """unmap off: the copy verifies and the zero areas stay allocated (at least 90 % of the
    disk's size on the host)."""
    ok, why = _rule_copy(o, sc)
    if not ok:
        return ok, why
    tgt, size = o.get("target_allocated"), o.get("virtual_size")
    if tgt is None or not size:
        return False, "the target's allocation was not measured"
    if tgt < 0.9 * size:
        return False, f"the target holds only {tgt / MIB:.1f} MiB of {size / MIB:.0f}: unmapped"
    return True, f"verifies; target stays {tgt / MIB:.1f} MiB of {size / MIB:.0f} allocated"


def _rule_source_enospc(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    reason = str(o.get("io_error_reason") or "")
    if sc.expected_error not in reason:
        return False, ("no BLOCK_IO_ERROR for the source" if not reason
                       else f"the I/O error said {reason!r}")
    ok, why = _rule_copy(o, sc)
    if not ok:
        return ok, why
    return True, (f"guest error ({o.get('io_error_action')}, VM {o.get('vm_status')}); the "
                  "job completed, the copy verifies")


def _rule_unplug(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("unplugged"):
        return False, "no DEVICE_DELETED: the guest did not let the device go"
    if o.get("job_running_after") is False:
        return False, "the unplug ended the job"
    if sc.expected_error not in str(o.get("qemu_error")):
        return False, f"deleting the node was not refused as busy ({o.get('qemu_error')})"
    ok, why = _rule_copy(o, sc)
    return ok, ("unplugged; the job went on and the copy verifies" if ok else why)


def _rule_unplug_cancels(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("unplugged"):
        return False, "no DEVICE_DELETED: the guest did not let the device go"
    if o.get("job_running_after") is not False:
        return False, "the job went on after its -drive was deleted"
    if o.get("job_end") != marks.BLOCK_JOB_CANCELLED or o.get("job_error"):
        return False, f"the job ended {o.get('job_end')} {o.get('job_error') or ''}".strip()
    if not o.get("guest_ops_after_action"):
        return False, "the guest stopped working after the unplug"
    return True, ("unplugged; QEMU cancelled the job with the drive "
                  f"({o.get('copied_fraction', 0) or 0:.0%} copied)")


def _rule_stress(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    said = o.get("outcome")
    if said == "converged":
        ok, why = _rule_copy(o, sc)
        return ok, (f"converged with the guest writing {o.get('guest_wrote_mib_s')} MiB/s"
                    if ok else why)
    if said == "said diverging":
        wrote = o.get("guest_wrote_mib_s")
        if wrote is None or wrote < STRESS_LIMIT_MIB_S:
            # the guest did not out-write the limit: the verdict was no truth
            return False, (f"the predictor said 'will not converge' with the guest writing "
                           f"{wrote} MiB/s, under the {STRESS_LIMIT_MIB_S:g} MiB/s limit: "
                           "a false alarm")
        return True, (f"the predictor said 'will not converge' after "
                      f"{o.get('decided_after_s')} s (guest {o.get('guest_wrote_mib_s')} MiB/s)")
    return False, "neither READY nor a verdict before the wait ran out"


def _rule_filter_node(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("filter_node_seen"):
        return False, "no node of that name while the job ran"
    return _rule_copy(o, sc)


def _rule_readonly(o: dict[str, Any], sc: Scenario) -> tuple[bool, str]:
    if not o.get("ready"):
        return False, "the job never became READY"
    if not _completed(o):
        return False, f"the job ended {o.get('job_end')}"
    if o.get("now_on") != TARGET_FILE:
        return False, f"the drive runs on {o.get('now_on')!r}, not the target"
    if not o.get("still_read_only"):
        return False, "the drive became writable"
    if not _copy_ok(o):
        return False, "the copy does not verify"
    return True, "pivoted to the target, still read-only; the copy verifies"


RULES: dict[str, Callable[[dict[str, Any], Scenario], tuple[bool, str]]] = {
    "copy": _rule_copy, "refused": _rule_refused, "job_survives": _rule_job_survives,
    "poweroff": _rule_poweroff, "cancelled_partial": _rule_cancelled_partial,
    "cancelled_ready": _rule_cancelled_ready, "sync_none": _rule_sync_none,
    "sync_top": _rule_sync_top, "same_point": _rule_same_point,
    "filter_node": _rule_filter_node, "readonly": _rule_readonly, "sparse": _rule_sparse,
    "allocation": _rule_allocation,
    "zeroes_written": _rule_zeroes_written, "source_enospc": _rule_source_enospc,
    "unplug": _rule_unplug, "unplug_cancels": _rule_unplug_cancels, "stress": _rule_stress,
}


def judge(name: str, observed: dict[str, Any]) -> dict[str, Any]:
    """Does what was *observed* match the anchor's expectation?  ``{"pass", "why"}``; a
    scenario that did not run here (``ran: false``) passes nothing and says why."""
    sc = _scenario(name)
    if observed.get("ran") is False:
        return {"pass": False, "why": f"not run here: {observed.get('why_not')}"}
    ok, why = RULES[sc.rule](observed, sc)
    return {"pass": ok, "why": why}


def _scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise BadInput(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


def scenario(*, name: str = "refuse_resize", image_mib: int = 64, fill_mib: int = 16,
             speed: int = 8 * MIB, workload_kib: int = 256, workload_rate_kib_s: float = 512,
             after_ready_s: float = 1.0, verify: bool = True,
             options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Run one scenario of the catalogue (:data:`SCENARIOS`) and judge it.

    :param name: the scenario.
    :param speed: the mirror's speed limit (scenarios that need the job still running when
        they act cap it lower).
    :param verify: boot each copy and check the guest's synced operations.
    """
    sc = _scenario(name)
    params = dict(locals())
    params.pop("sc")
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("scenario", params, options,
                unsupported={"libvirt": SCENARIOS_LIBVIRT}) as lab:
        ctx = _Ctx(lab, image_mib, fill_mib, speed, workload, after_ready_s, verify, name)
        observed = sc.run(ctx)
        lab.verdict = {"scenario": name, "kind": sc.kind, "anchor": sc.anchor,
                       "expected": sc.expected, **observed, **judge(name, observed)}
    return lab.result()


#: the columns of the catalogue's table
COLUMNS = ["scenario", "kind", "anchor", "expected", "job_end", "events", "qemu_error",
           "guest_io_errors", "copy_verifies", "pass", "why"]


def row(verdict: dict[str, Any]) -> dict[str, Any]:
    """One table row from a scenario run's verdict (events joined, compact)."""
    out = {c: verdict.get(c) for c in COLUMNS}
    events = verdict.get("events") or []
    out["events"] = " ".join(events) if isinstance(events, list) else events
    return out
