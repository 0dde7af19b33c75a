"""Target faults during a mirror: what QEMU does, how the job recovers, and the copy.

One function, :func:`target_fault`, for each *fault*:

===============  ===========================================================================
``nbd_suspend``  the target is an NBD export of ``qemu-storage-daemon``; SIGSTOP, SIGCONT
``nbd_down``     the same daemon killed, then a new one started on the same image
``eio``          the target's first writes fail with EIO (QEMU's ``blkdebug``)
``enospc``       the target sits on a small tmpfs and runs out of space; recovery grows it
``throttle``     the copy limit drops (``block-job-set-speed``) for the fault window
``nbdkit_*``     the NBD export behind nbdkit, impaired by its own filters: ``nbdkit_delay``
                 every write *delay_ms* late (the whole copy, to READY), ``nbdkit_error`` a
                 share *error_rate* of writes fail with EIO during the window,
                 ``nbdkit_rate`` the bandwidth capped to *throttle_speed* during it,
                 ``nbdkit_pause`` every request held during it (the pause filter)
===============  ===========================================================================

Each run records the fault window (shaded on the plots), what the job
reported in it, the recovery steps (``block-job-resume`` for a job paused on
the error, a new mirror onto the same, repaired target for a failed one), and,
once the job is ready and cancelled, boots the copy to check every synced
operation.

A dropped limit is paid backwards: QEMU's rate limiter keeps the bytes sent at the old
speed in its current 100 ms slice, so the first sleep at the new speed lasts up to
(those bytes) / (new speed).  From 8 MiB/s to 256 KiB/s that sleep took 3 s (768 KiB)
in 2 of 24 runs: a 3 s ``throttle`` window is then rightly judged ``stalled``, not
``slowed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from kvmlab import analysis, marks
from kvmlab.errors import BadInput, WaitTimeout
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    busy_vm,
    cancel_after,
    drive_to_ready,
    fault_behaviour,
    synced_manifest,
    verify_image,
)
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.faults import NbdkitProxy, NbdServer, SmallTmpfs, blkdebug_target, marked
from kvmlab.faults.nbd import EXPORT as NBD_EXPORT
from kvmlab.guest.workload import Workload
from kvmlab.live.jobs import Job
from kvmlab.model import ERROR_POLICIES_TARGET
from kvmlab.qemu import images
from kvmlab.qemu.images import make_guest_disk
from kvmlab.vm.machine import Machine

#: why this experiment cannot run on the libvirt backend
FAULTS_LIBVIRT = (
    "its targets (an NBD export, a blkdebug json: filename) are QMP-only; libvirt's "
    "blockCopy takes neither")

FAULTS = ("nbd_suspend", "nbd_down", "eio", "enospc", "throttle", "nbdkit_delay",
          "nbdkit_error", "nbdkit_rate", "nbdkit_pause")


def target_fault(*, fault: str = "eio", on_target_error: str = "report",
                 fault_after_s: float = 1.0, fault_s: float = 3.0, errors: int = 1,
                 tmpfs_mib: int = 8, throttle_speed: int = 256 * 1024,
                 delay_ms: int = 50, error_rate: float = 0.01,
                 image_mib: int = 64, fill_mib: int = 16, disk_format: str = "qcow2",
                 speed: int = 8 * 1024 * 1024, buf_size: int | None = 256 * 1024,
                 workload_kib: int = 256, workload_rate_kib_s: float = 512,
                 after_ready_s: float = 1.0, recover_timeout: float = 120,
                 verify: bool = True, options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Mirror a busy VM's disk onto a faulty target; return the recorded outcome.

    :param fault: one of :data:`FAULTS`.
    :param on_target_error: the mirror's policy (report, ignore, enospc, stop).
    :param fault_after_s, fault_s: when the timed faults (nbd_*, throttle) start, and how long.
    :param errors: how many target writes fail, for ``eio``.
    :param tmpfs_mib: size of the tmpfs the ``enospc`` target lives on (less than the data).
    :param throttle_speed: the limit of ``throttle``, and the bandwidth of ``nbdkit_rate``
        (bytes/s).
    :param delay_ms: how late every write is, for ``nbdkit_delay``.
    :param error_rate: the share of writes that fail, for ``nbdkit_error`` (0 to 1).
    :param verify: boot the copy and check the guest's synced operations.
    """
    if fault not in FAULTS:
        raise BadInput(f"fault={fault!r} is not one of {', '.join(FAULTS)}")
    if on_target_error not in ERROR_POLICIES_TARGET:
        raise BadInput(f"on_target_error={on_target_error!r} is not one of "
                       f"{', '.join(ERROR_POLICIES_TARGET)}")
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or not 0 < delay_ms <= 10_000:
        raise BadInput(f"delay_ms={delay_ms!r} must be 1 to 10000 ms")
    if isinstance(error_rate, bool) or not isinstance(error_rate, (int, float)) \
            or not 0 < error_rate <= 1:
        raise BadInput(f"error_rate={error_rate!r} must be a share above 0, at most 1")
    if fault == "enospc" and tmpfs_mib >= fill_mib:
        raise BadInput(f"tmpfs_mib={tmpfs_mib} must be below fill_mib={fill_mib} to run out")
    params = dict(locals())
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("target_fault", params, options, unsupported={"libvirt": FAULTS_LIBVIRT}) as lab, \
            ExitStack() as keep, ExitStack() as stack:
        rec = lab.recorder
        source = lab.workdir / f"disk.{disk_format}"
        base = make_guest_disk(source, image_mib, disk_format, fill_mib)
        vsize = int(images.info(source)["virtual-size"])
        target = _Target.make(fault, lab, stack, keep, vsize, errors=errors, tmpfs_mib=tmpfs_mib,
                              delay_ms=delay_ms, error_rate=error_rate)
        rec.track("target", target.file)
        vm = stack.enter_context(busy_vm(lab, source, workload, label="source"))

        def start(url: str) -> Job:
            rec.mark(marks.MIRROR_START, job=vm.disk_id, target=url)
            fmt = None if url.startswith("json:") else target.format
            return vm.mirror(vm.disk_id, url, fmt, mode="existing", speed=speed,
                             buf_size=buf_size, on_target_error=on_target_error)

        job = start(target.faulty)
        t0 = time.monotonic()
        with target.window(lab, vm, job, fault_after_s, fault_s, throttle_speed):
            pass
        job, steps = drive_to_ready(lab, job, recover_timeout,
                                    restart=lambda: start(target.repair(lab)))
        t_ready = time.monotonic()
        t_cut, outcome = cancel_after(lab, job, after_ready_s)
        t_settled = time.monotonic()      # the job ended: the cut took effect before this
        stack.close()                 # VM down, NBD daemon stopped (the tmpfs stays to verify)
        frames = rec.frames()
        windows = analysis.fault_windows(frames["events"])
        w = windows[windows["name"] == fault].iloc[0]
        effect = analysis.fault_effect(frames["samples"], frames["events"], float(w["start"]),
                                       float(w["end"]), job.id)
        ev = frames["events"]
        errs = [analysis.event_data(e) for _, e in ev[ev["name"] == marks.BLOCK_JOB_ERROR].iterrows()]
        lab.verdict = {
            "fault": fault, "on_target_error": on_target_error,
            "behaviour": fault_behaviour(effect, steps, len(errs)),
            **{f"fault_{k}": v for k, v in effect.items()},
            "error_events": len(errs),
            "error_actions": sorted({str(e.get("action")) for e in errs}),
            "recovery_steps": [s["step"] for s in steps],
            "paused_io_status": next((s["io_status"] for s in steps if s["step"] == "resume"),
                                     None),
            "job_end": outcome.event, "job_error": outcome.error,
            "time_to_ready_s": round(t_ready - t0, 3),
        }
        ok = outcome.ok and outcome.event == marks.BLOCK_JOB_COMPLETED
        if verify:
            manifest, in_flight = synced_manifest(vm, base, until=t_cut, settled=t_settled)
            checked = verify_image(lab, target.file, manifest)
            lab.verdict.update(checked, ops_in_flight_at_cancel=len(in_flight))
            ok = ok and checked["verify_pass"]
        lab.verdict["pass"] = bool(ok)
    return lab.result()



class _Target:
    """Where the copy goes for one fault: the faulty URL, the file behind it, the repair."""

    def __init__(self, file: Path, faulty: str, fmt: str, kind: str) -> None:
        self.file = file
        self.faulty = faulty
        self.format = fmt
        self.kind = kind
        self.nbd: NbdServer | None = None
        self.proxy: NbdkitProxy | None = None
        self.tmpfs: SmallTmpfs | None = None

    @classmethod
    def make(cls, fault: str, lab: LabRun, stack: ExitStack, keep: ExitStack, vsize: int, *,
             errors: int, tmpfs_mib: int, delay_ms: int = 0, error_rate: float = 0) -> _Target:
        """The target for *fault*; daemons go on *stack*, mounts on *keep* (closed later)."""
        mark = lab.recorder.mark
        if fault.startswith("nbdkit"):
            # qemu-storage-daemon's export behind nbdkit, whose filters make the fault
            file = lab.workdir / "target.qcow2"
            images.create(file, vsize, "qcow2")
            t = cls(file, "", "raw", fault)
            t.nbd = stack.enter_context(NbdServer(file, "qcow2", mark=mark))
            t.proxy = stack.enter_context(NbdkitProxy(
                t.nbd.socket, NBD_EXPORT, controls=True,
                delay_write_ms=delay_ms if fault == "nbdkit_delay" else 0,
                error_rate=error_rate if fault == "nbdkit_error" else 0))
            t.faulty = t.proxy.url
            return t
        if fault.startswith("nbd"):
            file = lab.workdir / "target.qcow2"
            images.create(file, vsize, "qcow2")
            t = cls(file, "", "raw", fault)
            t.nbd = stack.enter_context(NbdServer(file, "qcow2", mark=mark))
            t.faulty = t.nbd.url
            return t
        if fault == "enospc":
            t = cls(Path(), "", "raw", fault)
            t.tmpfs = SmallTmpfs(tmpfs_mib, mark=mark)
            folder = keep.enter_context(t.tmpfs)
            t.file = folder / "target.raw"
            images.create(t.file, vsize, "raw")
            t.faulty = str(t.file)
            return t
        file = lab.workdir / "target.raw"
        images.create(file, vsize, "raw")
        faulty = blkdebug_target(file, errors=errors) if fault == "eio" else str(file)
        return cls(file, faulty, "raw", fault)

    def repair(self, lab: LabRun) -> str:
        """The documented fix before mirroring again; returns the healthy target."""
        if self.tmpfs is not None and self.tmpfs.path is not None:
            self.tmpfs.grow(self.tmpfs.size_mib * 16)
            return str(self.file)
        if self.proxy is not None:
            self.proxy.errors(False)
            return self.proxy.url
        if self.nbd is not None:
            return self.nbd.url
        return str(self.file)                  # eio: the plain image, without blkdebug

    @contextmanager
    def window(self, lab: LabRun, vm: Machine, job: Job, after: float, length: float,
               throttle_speed: int) -> Iterator[None]:
        """Run the fault window (marked ``<fault>_start`` / ``<fault>_end``)."""
        mark = lab.recorder.mark
        if self.kind in ("eio", "enospc"):
            # the fault is the target itself: the window is from the start to the first error
            mark(marks.start(self.kind))
            try:
                _wait_error(job, 60)
                if self.tmpfs is not None and _paused_on_error(job):
                    self.tmpfs.grow(self.tmpfs.size_mib * 16)
            finally:
                mark(marks.end(self.kind))
            yield
            return
        if self.kind == "nbdkit_delay":
            # the filter delays every write from the start: the window is the whole copy
            with marked(mark, marks.NBDKIT_DELAY):
                _wait_ready_or_error(job, 300)
            yield
            return
        time.sleep(after)
        if self.proxy is not None:
            proxy = self.proxy
            with marked(mark, self.kind):
                t_on = time.monotonic()
                if self.kind == "nbdkit_error":
                    proxy.errors(True)
                elif self.kind == "nbdkit_rate":
                    proxy.set_rate(throttle_speed)
                else:
                    proxy.pause()
                try:
                    if self.kind == "nbdkit_error":
                        # errors come at random: the window lasts until QEMU has seen one
                        # (or the job is READY), and at least *length*
                        _wait_error(job, 60)
                    time.sleep(max(0.0, length - (time.monotonic() - t_on)))
                finally:
                    if self.kind == "nbdkit_error":
                        proxy.errors(False)
                    elif self.kind == "nbdkit_rate":
                        proxy.set_rate(0)
                    else:
                        proxy.resume()
        elif self.kind == "throttle":
            with marked(mark, marks.THROTTLE, speed=throttle_speed):
                mark(marks.SET_SPEED, job=job.id, speed=throttle_speed)
                job.set_speed(throttle_speed)
                time.sleep(length)
                speed = job.spec.speed if job.spec else 0
                mark(marks.SET_SPEED, job=job.id, speed=speed)
                job.set_speed(speed)
        else:
            assert self.nbd is not None
            ctx: Callable[[], Any] = self.nbd.suspend if self.kind == "nbd_suspend" \
                else self.nbd.down
            with ctx():
                time.sleep(length)
        yield


def _wait_error(job: Job, timeout: float) -> None:
    """Until the job reports an error (BLOCK_JOB_ERROR, or it ended) or becomes ready."""
    deadline = time.monotonic() + timeout
    while job.backend.events.find(marks.BLOCK_JOB_ERROR, {"device": job.id}, since=job.since) is None \
            and job.ended is None and not job.is_ready:
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{job.id}: no target error within {timeout:g} s")
        time.sleep(0.05)


def _wait_ready_or_error(job: Job, timeout: float) -> None:
    """Until the job is ready, ends or reports an error (a slow target's whole copy)."""
    deadline = time.monotonic() + timeout
    while not job.is_ready and job.ended is None and job.backend.events.find(
            marks.BLOCK_JOB_ERROR, {"device": job.id}, since=job.since) is None:
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{job.id}: not ready within {timeout:g} s of a slow target")
        time.sleep(0.05)


def _paused_on_error(job: Job) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info = job.info()
        if info is None:
            return False
        if info.paused and info.io_status != "ok":
            return True
        time.sleep(0.05)
    return False
