"""What a guest's access pattern does to a mirror, and what the mirror costs the guest.

A database's 4 KiB random writes with fsync dirty the mirror's bitmap very differently
from a log's 1 MiB appends: each write marks a whole *granularity*-sized cluster dirty,
so the mirror copies again far more than the guest wrote.  The steps:

1. a VM whose guest runs a fio profile (:data:`kvmlab.guest.fio.PROFILES`) at
   ``rate_kib_s`` on a file of the disk written whole beforehand (after one round of
   the guest's file operations, so nothing else writes);
2. ``baseline_s`` seconds of fio with no mirror: the guest's latency to compare with;
3. ``drive-mirror`` with ``granularity`` and a ``speed`` limit; wait for READY at most
   ``ready_timeout`` s, while the convergence predictor (:mod:`kvmlab.live.predictor`)
   watches: when it first says "will not converge" is recorded, the wait goes on (so the
   table can show whether it was right);
4. cancel (at READY after ``after_ready_s``, or at the timeout).

The verdict holds the mirror's re-copy work against the guest's writes during the job
(write amplification: how much the job's length grew, over the bytes fio wrote), the
time to READY, the predictor's call, and fio's IOPS and completion latency (p50/p99)
before the mirror and during it.
"""

from __future__ import annotations

import math
import time
from typing import Any

from kvmlab import marks
from kvmlab.errors import BadInput, JobError, WaitTimeout
from kvmlab.experiments.common import ExperimentResult, LabRun, busy_vm
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest import fio
from kvmlab.guest.workload import Workload
from kvmlab.live.jobs import Job
from kvmlab.live.predictor import Predictor
from kvmlab.model import check_granularity, check_speed
from kvmlab.qemu.images import make_guest_disk
from kvmlab.units import MIB


def workload_cost(*, profile: str = "rand-write-4k", rate_kib_s: int = fio.DEFAULT_RATE_KIB_S,
                  granularity: int = 64 * 1024, speed: int = 8 * MIB, image_mib: int = 64,
                  fill_mib: int = 8, fio_mib: int = fio.DEFAULT_SIZE_MIB,
                  baseline_s: float = 5.0, ready_timeout: float = 40.0,
                  after_ready_s: float = 5.0,
                  options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Mirror a disk while the guest runs fio *profile*; return what each cost the other.

    :param profile: a fio profile (``kvmlab.guest.fio.PROFILES``).
    :param rate_kib_s: its rate (KiB/s).
    :param granularity: the mirror's dirty-bitmap granularity (bytes, a power of two).
    :param speed: the mirror's speed limit (bytes/s, 0 for none).
    :param fio_mib: the size of fio's file (the region its writes dirty).
    """
    if profile not in fio.PROFILES:
        raise BadInput(f"profile={profile!r} is not one of {', '.join(fio.PROFILES)}")
    check_granularity(granularity)
    check_speed(speed)
    if fio_mib + fill_mib + 8 > image_mib:
        raise BadInput(f"fio_mib={fio_mib} and fill_mib={fill_mib} leave no room on a "
                       f"{image_mib} MiB disk")
    params = dict(locals())
    job = fio.profile(profile, rate_kib_s, fio_mib)    # a bad rate: said now, nothing made
    options = options.replace(workload=f"{profile}:{rate_kib_s}")     # recorded in run.json
    with LabRun("workload_cost", params, options) as lab:
        lab.fio = job                                  # the options' job, on fio_mib MiB
        rec = lab.recorder
        source = lab.workdir / "disk.qcow2"
        make_guest_disk(source, image_mib, "qcow2", fill_mib)
        target = lab.workdir / "mirror.qcow2"
        rec.track("mirror", target)
        # one round of file operations (busy_vm waits for the first): then fio alone writes
        with busy_vm(lab, source, Workload(dd_kib=64, rounds=1), label="source") as vm:
            time.sleep(baseline_s)             # fio runs (busy_vm waited for its first second)
            rec.mark(marks.MIRROR_START, job=vm.disk_id, target=str(target))
            t_start = time.monotonic()
            mirror = vm.mirror(vm.disk_id, target, "qcow2", speed=speed,
                               granularity=granularity)
            ready_s, diverging_s, last = _wait(lab, mirror, ready_timeout)
            if ready_s is not None:
                rec.mark(marks.READY_SEEN, job=mirror.id)
                time.sleep(after_ready_s)
            t_end = time.monotonic()
            rec.mark(marks.CANCEL, job=mirror.id, reason="ready" if ready_s is not None
                     else "not ready in time")
            mirror.cancel(force=ready_s is None)
            outcome = mirror.wait_done(60)
        lab.verdict = _verdict(lab, mirror.id, t_start, t_end, ready_s, diverging_s, last,
                               outcome.event, outcome.ok, ready_timeout)
    return lab.result()


def _wait(lab: LabRun, job: Job, timeout: float) -> tuple[float | None, float | None, str]:
    """Wait for READY up to *timeout* s, with the predictor watching; returns the seconds to
    READY (None: not ready), when the predictor first said "will not converge" (None:
    never), and its last phrase."""
    pred = Predictor()
    t0 = time.monotonic()
    deadline = t0 + timeout
    diverging_s: float | None = None
    text = ""
    while True:
        try:
            job.wait_ready(max(0.0, min(0.25, deadline - time.monotonic())))
            return time.monotonic() - t0, diverging_s, text
        except WaitTimeout:
            if time.monotonic() >= deadline:
                return None, diverging_s, text
        info = job.info()
        if info is None:
            raise JobError(f"{job.id}: gone before READY")
        out = pred.add(time.monotonic() - t0, info.offset, info.len, ready=info.ready,
                       paused=info.paused, status=info.status, speed=info.speed,
                       active=job.active)
        text = out.text()
        if out.state == "diverging" and diverging_s is None:
            diverging_s = time.monotonic() - t0
            lab.recorder.mark(marks.DIVERGING, job=job.id, watching_only=True)


def _verdict(lab: LabRun, job: str, t_start: float, t_end: float, ready_s: float | None,
             diverging_s: float | None, said: str, job_end: str, ended_ok: bool,
             ready_timeout: float) -> dict[str, Any]:
    frames = lab.recorder.frames()
    t0 = lab.recorder.t0
    a, b = t_start - t0, t_end - t0
    before = fio.window(frames["events"], a - float(lab.params["baseline_s"]), a)
    during = fio.window(frames["events"], a, b)
    js = frames["samples"]
    js = js[(js["job"] == job) & (js["t"] <= b)]
    len0 = int(js["len"].iloc[0]) if len(js) else 0
    len1 = int(js["len"].iloc[-1]) if len(js) else 0
    written = during.get("write_bytes", 0.0)
    recopied = max(0, len1 - len0)

    def r(x: float | None, nd: int = 2) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)

    measured = bool(before) and bool(during) and len(js) > 0
    return {
        "pass": measured and ended_ok,
        "profile": lab.params["profile"], "rate_kib_s": lab.params["rate_kib_s"],
        "granularity": lab.params["granularity"], "speed": lab.params["speed"],
        "ready": ready_s is not None, "ready_s": r(ready_s, 1),
        "outcome": f"READY in {ready_s:.1f} s" if ready_s is not None
        else f"not READY in {ready_timeout:g} s",
        "predictor_diverging_s": r(diverging_s, 1), "predictor_last": said,
        "job_s": r(b - a, 1), "first_len_mib": r(len0 / MIB),
        "recopied_mib": r(recopied / MIB), "guest_written_mib": r(written / MIB),
        "write_amplification": r(recopied / written if written else None, 1),
        "iops_before": r(before.get("write_iops", 0.0) + before.get("read_iops", 0.0), 1),
        "iops_during": r(during.get("write_iops", 0.0) + during.get("read_iops", 0.0), 1),
        "write_p50_ms_before": r(before.get("write_p50_us", math.nan) / 1000, 3),
        "write_p50_ms_during": r(during.get("write_p50_us", math.nan) / 1000, 3),
        "write_p99_ms_before": r(before.get("write_p99_us", math.nan) / 1000, 3),
        "write_p99_ms_during": r(during.get("write_p99_us", math.nan) / 1000, 3),
        "job_end": job_end,
    }
