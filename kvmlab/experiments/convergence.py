"""Convergence under pressure: a guest that writes faster than the mirror copies.

The problem users report most about mirrors: the job never gets READY because the guest
dirties its disk faster than the target takes the data.  QEMU's answer is the active
mode (``copy-mode: write-blocking``): every guest write goes to both sides before it
completes, so nothing the guest writes is left behind, at the price of the guest's write
latency.  On QEMU 8.2+ a running background job can be switched to it
(``block-job-change``), which is what Proxmox does when a job will not converge.

The steps:

1. a VM whose guest writes ``workload_rate_kib_s`` (every ``dd`` reports its duration);
2. ``baseline_s`` seconds of guest writes with no mirror (after its first two, cold,
   writes): the latency to compare with;
3. ``drive-mirror`` with a speed limit below the guest's write rate, in ``copy_mode``,
   onto a local file or, with ``slow_target_bps``, a *slow target*: an NBD export of
   ``qemu-storage-daemon`` whose writes go through a throttle group (the active mode's
   cost shows there: each guest write waits for the slow side);
4. wait for READY with the convergence predictor watching (:mod:`kvmlab.analysis.converge`):
   ``give_up_when="diverging"`` stops waiting as soon as it says the job will not
   converge, ``switch_when="diverging"`` switches the job to write-blocking instead;
5. if READY: the guest keeps writing ``after_ready_s`` seconds (in sync), then cancel;
   else cancel.

The verdict says whether the job converged, with the rates that prove it either way, and
what the guest paid: each write's latency and the write throughput, before and during the
mirror.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from kvmlab import marks
from kvmlab.analysis import converge
from kvmlab.errors import BadInput, JobDiverging, JobStalled, WaitTimeout
from kvmlab.experiments.common import ExperimentResult, LabRun
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.faults import NbdServer
from kvmlab.guest.workload import Workload
from kvmlab.model import COPY_MODES, check_speed
from kvmlab.qemu import builds, images
from kvmlab.qemu.images import make_guest_disk
from kvmlab.units import MIB
from kvmlab.vm import qemu_probe

#: the policies a run can follow when the predictor says "diverging"
POLICIES = (None, "diverging")


def convergence_pressure(*, copy_mode: str = "background", switch_when: str | None = None,
                         give_up_when: str | None = "diverging", speed: int = 1024 * 1024,
                         workload_kib: int = 256, workload_rate_kib_s: float = 3072,
                         image_mib: int = 64, fill_mib: int = 4, baseline_s: float = 3.0,
                         after_ready_s: float = 2.0, ready_timeout: float = 60.0,
                         stall_timeout: float | None = 20.0, slow_target_bps: int = 0,
                         raise_speed_to: int | None = None,
                         workload_then_rate_kib_s: float = 0.0, workload_change_after_s: int = 0,
                         options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Mirror a disk the guest writes faster than the copy limit; see the module doc.

    :param copy_mode: ``background`` (QEMU's default) or ``write-blocking`` (active).
    :param switch_when: ``"diverging"``: switch a background job to write-blocking when the
        predictor says it will not converge (QEMU 8.2+; one line on older builds).
    :param give_up_when: ``"diverging"``: stop waiting when the predictor says so (the
        verdict then has its rates); None waits ``ready_timeout``.
    :param speed: the mirror's speed limit, bytes/s (below the guest's rate: pressure).
    :param workload_kib, workload_rate_kib_s: each guest write's size and the write rate.
    :param stall_timeout: give up after this many seconds without progress.
    :param slow_target_bps: > 0: mirror onto an NBD export whose writes are limited to
        this many bytes/s (QMP backend only); 0: a local qcow2 file.
    :param raise_speed_to: when the predictor says "diverging", raise the speed limit to
        this many bytes/s (0: unlimited) once and keep waiting, as an engineer would
        (with *give_up_when*; the raise is marked ``set_speed``).
    :param workload_then_rate_kib_s, workload_change_after_s: the guest changes its write
        rate to this, this many seconds after it began writing (the baseline included);
        recorded as the event ``guest_rate_change``.
    """
    params = dict(locals())
    _check_policies(copy_mode, switch_when, give_up_when, options)
    if raise_speed_to is not None:
        check_speed(raise_speed_to, "raise_speed_to")
        if give_up_when is None:
            raise BadInput("raise_speed_to needs give_up_when='diverging' (the raise is made "
                           "when the predictor says so)")
    _check_target(slow_target_bps, options)
    # the guest writes for as long as the job runs: keep a quarter of the disk's worth of
    # files (oldest deleted) so it never fills up and stops writing
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s,
                        max_files=max(4, image_mib * 1024 // 4 // max(workload_kib, 1)),
                        then_rate_kib_s=workload_then_rate_kib_s,
                        change_after_s=workload_change_after_s)
    with LabRun("convergence_pressure", params, options) as lab, ExitStack() as stack:
        rec = lab.recorder
        source = lab.workdir / "disk.qcow2"
        target = lab.workdir / "mirror.qcow2"
        make_guest_disk(source, image_mib, "qcow2", fill_mib)
        rec.track("target", target)
        url, fmt, mode = _target(stack, lab.recorder.mark, source, target, slow_target_bps,
                                 options)
        with lab.machine(source, "source", mode="workload", workload=workload) as vm:
            lab.note_machine(vm, "source")
            vm.wait_ops(2, "dd", after=0.0, timeout=120)   # past the first, cold writes
            t_base = time.monotonic()
            time.sleep(baseline_s)                   # the guest's writes with no mirror
            rec.mark(marks.MIRROR_START, job=vm.disk_id, copy_mode=copy_mode, target=url)
            t_start = time.monotonic()
            job = vm.mirror(vm.disk_id, url, fmt, mode=mode, speed=speed, copy_mode=copy_mode)
            gave_up: str | None = None
            ready = None
            pred = converge.Predictor()
            raised_at: float | None = None
            try:
                try:
                    ready = job.wait_ready(ready_timeout, stall_timeout=stall_timeout,
                                           give_up_when=give_up_when, switch_when=switch_when,
                                           mark=rec.mark, predictor=pred)
                except JobDiverging:
                    if raise_speed_to is None:
                        raise
                    job.set_speed(raise_speed_to)            # the engineer's answer
                    raised_at = time.monotonic()
                    rec.mark(marks.SET_SPEED, job=job.id, speed=raise_speed_to,
                             reason="diverging")
                    ready = job.wait_ready(max(1.0, ready_timeout - (raised_at - t_start)),
                                           stall_timeout=stall_timeout, mark=rec.mark)
            except (JobDiverging, JobStalled, WaitTimeout) as err:
                gave_up = str(err)
            t_ready = time.monotonic()
            if ready is not None:
                rec.mark(marks.READY_SEEN, job=job.id)
                time.sleep(after_ready_s)            # the guest writes while in sync
            rec.mark(marks.CANCEL, job=job.id, reason=gave_up or "after ready")
            t_cut = time.monotonic()
            job.cancel(force=ready is None)
            outcome = job.wait_done(60)
            ops = vm.guest_ops()
        outlook = job.outlook
        cost = {
            "before": converge.write_cost(ops, t_base, t_start),
            "mirror": converge.write_cost(ops, t_start, t_ready),
            "ready": converge.write_cost(ops, t_ready, t_cut) if ready is not None else None,
        }
        lab.verdict = {
            "pass": outcome.ok and (ready is not None or gave_up is not None),
            "converged": ready is not None,
            "time_to_ready_s": round(ready.mono - t_start, 3) if ready is not None else None,
            "gave_up": gave_up,
            "copy_mode": copy_mode,
            "target": (f"NBD export, writes limited to {slow_target_bps / 2**20:g} MiB/s"
                       if slow_target_bps else "local qcow2 file"),
            "switched_after_s": (round(job.switched_at - t_start, 3)
                                 if job.switched_at is not None else None),
            "speed_raised_after_s": (round(raised_at - t_start, 3)
                                     if raised_at is not None else None),
            # the predictor's clock starts with the wait, at the mirror's start
            "diverging_after_s": pred.first_seen.get("diverging"),
            "rates": _rates(outlook),
            "guest_write_cost": cost,
            "latency_ratio": _ratio(cost["mirror"], cost["before"], "latency_median_ms"),
            "throughput_ratio": _ratio(cost["mirror"], cost["before"], "throughput_mib_s"),
            "p95_latency_ratio": _ratio(cost["mirror"], cost["before"], "latency_p95_ms"),
            "written_ratio": _ratio(cost["mirror"], cost["before"], "written_mib_s"),
            "job_end": outcome.event, "job_error": outcome.error,
        }
    return lab.result()


def _check_policies(copy_mode: str, switch_when: str | None, give_up_when: str | None,
                    options: RunOptions) -> None:
    """Policies, and a switch the QEMU asked for cannot make, are one line before anything
    (run folder, image, VM) is created."""
    for name, value in (("switch_when", switch_when), ("give_up_when", give_up_when)):
        if value not in POLICIES:
            raise BadInput(f"{name}={value!r}: the only policy is 'diverging' (or None)")
    if copy_mode not in COPY_MODES:
        raise BadInput(f"copy_mode={copy_mode!r} is not one of {', '.join(COPY_MODES)}")
    if switch_when is not None:
        caps = qemu_probe.capabilities(builds.resolve(options.qemu))
        if not caps.block_job_change:
            raise BadInput(f"switch_when={switch_when!r} needs block-job-change, which QEMU "
                           f"{caps.version} lacks (it came in QEMU 8.2: try qemu='10.0')")


def _check_target(slow_target_bps: int, options: RunOptions) -> None:
    """A slow target is a whole number of bytes/s, on the QMP backend (libvirt's blockCopy
    here writes to files): one line before anything is created."""
    check_speed(slow_target_bps, "slow_target_bps", "a local file")
    if slow_target_bps and options.backend != "qmp":
        raise BadInput("slow_target_bps needs the qmp backend (the libvirt backend mirrors "
                       "to files only)")


def _target(stack: ExitStack, mark: Any, source: Path, target: Path, slow_target_bps: int,
            options: RunOptions) -> tuple[str, str, str]:
    """The mirror's target as (path or URL, format, mode): a file QEMU creates, or an
    existing image served by a throttled NBD daemon (stopped when *stack* closes)."""
    if not slow_target_bps:
        return str(target), "qcow2", "absolute-paths"
    images.create(target, int(images.info(source)["virtual-size"]), "qcow2")
    nbd = stack.enter_context(NbdServer(target, "qcow2", mark=mark, qemu=options.qemu,
                                        write_bps=slow_target_bps))
    return nbd.url, "raw", "existing"


def _rates(out: converge.Outlook | None) -> dict[str, Any] | None:
    if out is None:
        return None
    mib = MIB
    return {"state": out.state, "copy_mib_s": _r(out.copy_rate, mib),
            "dirty_mib_s": _r(out.dirty_rate, mib), "net_mib_s": _r(out.net_rate, mib),
            "remaining_mib": round(out.remaining / mib, 2)}


def _r(v: float | None, unit: float) -> float | None:
    return None if v is None else round(v / unit, 3)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return round(float(a[key]) / float(b[key]), 3)
