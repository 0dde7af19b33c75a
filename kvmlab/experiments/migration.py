"""Live storage migration: mirror a running VM's disks into another QEMU, migrate, hand over.

The flow libvirt's ``virsh migrate --copy-storage-all`` drives, and QEMU's iotest 194 tests,
between two lab QEMUs on this host:

1. the destination starts paused (``-S``) with ``-incoming defer`` and empty disks, and
   serves them over NBD (``nbd-server-start`` on a unix socket or 127.0.0.1, one writable
   ``block-export-add`` per disk);
2. the source, its guest busy, mirrors every disk into those exports (``sync=full``,
   ``mode=existing``, format raw: the server handles the image format);
3. once every job is READY, the source migrates the VM's RAM and device state (``migrate``),
   its progress sampled as a time series of its own (``query-migrate``: status, bytes
   transferred and remaining, dirty-pages rate, expected and final downtime);
4. when the migration completes the source is paused: it cancels its mirrors (each a last
   sync, then COMPLETED), the destination stops its NBD server and continues (``cont``).

The destination's guest then proves it has the data: it keeps working, and its disk, booted
in a verify VM afterwards, holds every operation the guest synced on the source before the
switchover and on the destination after it.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import marks
from kvmlab.errors import BackendError, BadInput, ConnectionLost, WaitTimeout
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    busy_vm,
    cut_at_ready,
    start_together,
    surely_after_cut,
    synced_manifest,
    verify_image,
    wait_begun_on_all,
)
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.faults import NbdkitProxy
from kvmlab.guest.workload import Manifest, Workload
from kvmlab.live.jobs import Job
from kvmlab.live.predictor import RamPredictor, ram_outlook
from kvmlab.model import COPY_MODES, ERROR_POLICIES_TARGET, check_speed
from kvmlab.qemu import images
from kvmlab.qemu.images import make_guest_disk
from kvmlab.store.runs import MIGRATION_FILE
from kvmlab.units import MIB
from kvmlab.vm.machine import Drive, Machine, data_drive, guest_dev

#: what the libvirt backend does of the flow, in one line
MIGRATION_LIBVIRT = ("on libvirt the source's mirrors are blockCopy jobs into the destination's "
                     "NBD exports, cut together at READY and verified; libvirt refuses to "
                     "migrate a domain to the host it runs on, so no migrate, no handover")
TRANSPORTS = ("unix", "tcp")
#: faults during the flow (see :func:`storage_migration`)
FAULTS = ("link_before_ready", "link_after_ready", "dest_dies", "migrate_cancel")


def storage_migration(*, image_mib: int = 64, fill_mib: int = 16, data_disks: int = 0,
                      nbd: str = "unix", speed: int = 0, copy_mode: str = "background",
                      max_bandwidth: int = 0, downtime_limit_ms: int = 0,
                      workload_kib: int = 256, workload_rate_kib_s: float = 512,
                      ram_mib_s: float = 0,
                      link_delay_ms: int = 0, link_rate_bps: int = 0,
                      link_error_rate: float = 0, ready_s: float = 2.0, after_s: float = 2.0,
                      fault: str = "none", on_target_error: str = "report",
                      on_dest_death: str = "cancel", source_after: str = "quit", ready_timeout: float = 120,
                      give_up_when: str | None = None, stall_timeout: float = 30,
                      migrate_timeout: float = 120,
                      options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Move a busy VM and its disks to a second QEMU; return the recorded handover.

    :param data_disks: data disks beside the system disk (0 to 3), each mirrored too.
    :param nbd: the destination's NBD server on a ``unix`` socket or on ``tcp`` 127.0.0.1.
    :param speed: each mirror's speed limit (bytes/s, 0 = unlimited).
    :param copy_mode: ``background`` or ``write-blocking`` (active) mirrors.
    :param max_bandwidth: the migration's ``max-bandwidth`` (bytes/s; 0 = QEMU's default).
    :param downtime_limit_ms: the migration's ``downtime-limit`` (0 = QEMU's default).
    :param ram_mib_s: the guest also rewrites this many MiB/s of its RAM (no disk I/O):
        what the migration's RAM stream must outpace (:class:`Workload`'s ``ram_mib_s``).
    :param link_delay_ms: latency added to every write on the NBD link (an nbdkit proxy with
        its ``delay`` filter in front of each export); 0 for a direct link.
    :param link_rate_bps: the NBD link's bandwidth cap, bytes/s (nbdkit's ``rate`` filter).
    :param link_error_rate: the share of writes on the NBD link that fail with EIO
        (nbdkit's ``error`` filter), 0 to 1; what the mirrors do then is
        *on_target_error*'s.
    :param ready_s: how long the guest writes with every mirror READY (each write reaching
        the destination's disk through the mirror) before the migration starts.
    :param after_s: how long the destination runs on its own before it is checked.
    :param fault: ``none``, or one of :data:`FAULTS`: the NBD link dies (its nbdkit proxy
        killed) before READY or after READY before ``migrate``; the destination QEMU dies
        during ``migrate``; the migration is cancelled after READY.  A fault run passes
        when the source VM survives where it was and its guest keeps working.
    :param on_target_error: the mirrors' policy when their target fails.
    :param on_dest_death: after a failed migration, ``cancel`` the source's mirrors or
        ``keep`` them as they are.
    :param source_after: after a handover, ``quit`` the source QEMU (as libvirt does) or
        ``keep`` it, paused, until the run ends.

    On the libvirt backend (:data:`MIGRATION_LIBVIRT`) the source is a libvirt domain and
    each mirror a ``blockCopy`` into the destination's export (libvirt's own storage
    migration does the same); the flow stops at READY: every disk is cut at one point
    (the VM stopped, the jobs cancelled, the VM continued) and the destination's disks are
    verified.  It takes no error policy and no migration fault.
    :param give_up_when: ``"diverging"``: stop waiting for READY as soon as the convergence
        predictor says a mirror will not converge; None: wait *ready_timeout* (or until no
        progress for *stall_timeout* s).  Either way a migration whose disks never get
        READY ends there: its mirrors cancelled, the source running on, the verdict FAIL
        with the predictor's last word.  The RAM stream has its predictor too
        (:class:`~kvmlab.live.predictor.RamPredictor`: "RAM will not converge: dirtying X
        MiB/s over Y MiB/s", marked ``ram_diverging``); *migrate_timeout* cancels it.
    """
    if fault not in ("none", *FAULTS):
        raise BadInput(f"fault={fault!r} is not one of none, {', '.join(FAULTS)}")
    if on_target_error not in ERROR_POLICIES_TARGET:
        raise BadInput(f"on_target_error={on_target_error!r} is not one of "
                       f"{', '.join(ERROR_POLICIES_TARGET)}")
    if on_dest_death not in ("cancel", "keep") or source_after not in ("quit", "keep"):
        raise BadInput(f"on_dest_death={on_dest_death!r} must be cancel or keep, "
                       f"source_after={source_after!r} quit or keep")
    if give_up_when not in (None, "diverging"):
        raise BadInput(f"give_up_when={give_up_when!r}: the only policy is 'diverging'")
    if not 0 < stall_timeout <= 3600:
        raise BadInput(f"stall_timeout={stall_timeout!r} must be 0 to 3600 s")
    if nbd not in TRANSPORTS:
        raise BadInput(f"nbd={nbd!r} is not one of {', '.join(TRANSPORTS)}")
    if copy_mode not in COPY_MODES:
        raise BadInput(f"copy_mode={copy_mode!r} is not one of {', '.join(COPY_MODES)}")
    if isinstance(data_disks, bool) or not isinstance(data_disks, int) \
            or not 0 <= data_disks <= 3:
        raise BadInput(f"data_disks={data_disks!r} must be an integer from 0 to 3")
    check_speed(speed)
    check_speed(max_bandwidth, "max_bandwidth")
    check_speed(link_rate_bps, "link_rate_bps")
    if isinstance(link_error_rate, bool) or not isinstance(link_error_rate, (int, float)) \
            or not 0 <= link_error_rate <= 1:
        raise BadInput(f"link_error_rate={link_error_rate!r} must be a share from 0 to 1")
    if isinstance(link_delay_ms, bool) or not isinstance(link_delay_ms, int) \
            or not 0 <= link_delay_ms <= 10_000:
        raise BadInput(f"link_delay_ms={link_delay_ms!r} must be 0 to 10000 ms")
    if not 0 <= ready_s <= 3600 or not 0 <= after_s <= 3600:
        raise BadInput(f"ready_s={ready_s!r} and after_s={after_s!r} must be 0 to 3600 s")
    if isinstance(downtime_limit_ms, bool) or not isinstance(downtime_limit_ms, int) \
            or not 0 <= downtime_limit_ms <= 2_000_000:
        raise BadInput(f"downtime_limit_ms={downtime_limit_ms!r} must be 0 to 2000000 ms")
    libvirt = options.backend == "libvirt"
    if libvirt and (on_target_error != "report" or fault in ("dest_dies", "migrate_cancel")):
        raise BadInput(f"on libvirt, {MIGRATION_LIBVIRT}: on_target_error must be report and "
                       f"fault none, link_before_ready or link_after_ready")
    params = dict(locals())
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s,
                        ram_mib_s=ram_mib_s)
    flow = _Flow(nbd=nbd, speed=speed, copy_mode=copy_mode, max_bandwidth=max_bandwidth,
                 downtime_limit_ms=downtime_limit_ms, link_delay_ms=link_delay_ms,
                 link_rate_bps=link_rate_bps, link_error_rate=float(link_error_rate),
                 ready_s=ready_s, after_s=after_s,
                 fault=fault, on_target_error=on_target_error, on_dest_death=on_dest_death,
                 source_after=source_after, ready_timeout=ready_timeout,
                 give_up_when=give_up_when, stall_timeout=stall_timeout,
                 migrate_timeout=migrate_timeout, libvirt=libvirt)
    with LabRun("storage_migration", params, options) as lab, ExitStack() as links:
        src_drives, dst_drives, bases = _disks(lab, image_mib, fill_mib, data_disks)
        with busy_vm(lab, src_drives[0], workload, label="source",
                     extra_drives=src_drives[1:]) as src, \
                lab.machine(dst_drives[0], "dest", embedded=True, mode="workload",
                            workload=workload, extra_drives=dst_drives[1:],
                            extra_args=["-S", "-incoming", "defer"]) as dst:
            v = {"disks": len(src_drives), **flow.run(lab, src, dst, links)}
        if fault == "none" and v.get("outcome") == "mirrored and cut":
            # libvirt: the destination's disks hold the source's, cut at one point
            several = len(src_drives) > 1
            checks = [verify_image(lab, Path(drive.path), synced_manifest(
                src, base, until=flow.t_cut, disk=guest_dev(i),
                absent_from=flow.t_switch if several else None,
                settled=None if several else flow.t_switch)[0],
                label="verify" if i == 0 else f"verify-{drive.id}")
                for i, (drive, base) in enumerate(zip(dst_drives, bases))]
            v["verify_pass"] = all(c["verify_pass"] for c in checks)
            v["checked"] = sum(c["checked"] for c in checks)
            v["pass"] = bool(v["jobs_completed"] and v["verify_pass"])
        elif fault == "none" and v.get("migration_status") == "completed":
            # the destination's disks, booted: every synced operation, both sides of the switch
            checks = [verify_image(lab, Path(drive.path),
                                   _both_sides(src, dst, base, flow.t_switch, guest_dev(i)),
                                   label="verify" if i == 0 else f"verify-{drive.id}")
                      for i, (drive, base) in enumerate(zip(dst_drives, bases))]
            v["verify_pass"] = all(c["verify_pass"] for c in checks)
            v["checked"] = sum(c["checked"] for c in checks)
            v["pass"] = bool(v["jobs_completed"] and v["dest_ops_after"] > 0
                             and v["dest_state"] == "running" and v["verify_pass"])
        elif fault == "none":
            v.update({"pass": False, "reason": v.get("reason")
                      or f"the migration ended {v.get('migration_status')}"})
        lab.verdict = v
    return lab.result()


@dataclass
class _Flow:
    """The migration's steps with the user's choices; :meth:`run` returns the verdict's
    measures (a fault run: what the source did, and whether it survived)."""

    nbd: str
    speed: int
    copy_mode: str
    max_bandwidth: int
    downtime_limit_ms: int
    link_delay_ms: int
    link_rate_bps: int
    link_error_rate: float
    ready_s: float
    after_s: float
    fault: str
    on_target_error: str
    on_dest_death: str
    source_after: str
    ready_timeout: float
    give_up_when: str | None
    stall_timeout: float
    migrate_timeout: float
    libvirt: bool = False
    t_switch: float = 0.0
    t_cut: float = 0.0

    def run(self, lab: LabRun, src: Machine, dst: Machine, links: ExitStack) -> dict[str, Any]:
        rec = lab.recorder
        v: dict[str, Any] = {}
        # 1. the destination serves its empty disks (behind nbdkit when the link is impaired
        #    or is to die)
        urls, upstream = _serve(dst, self.nbd)
        rec.mark(marks.NBD_EXPORTS, urls=urls)
        proxies: dict[str, NbdkitProxy] = {}
        if self.link_delay_ms or self.link_rate_bps or self.link_error_rate \
                or self.fault.startswith("link"):
            proxies = _proxies(links, upstream, list(urls), self.link_delay_ms,
                               self.link_rate_bps, self.link_error_rate)
            urls = {e: p.url for e, p in proxies.items()}
            rec.mark(marks.NBD_EXPORTS, urls=urls, delay_write_ms=self.link_delay_ms,
                     rate_bps=self.link_rate_bps, error_rate=self.link_error_rate)
        # 2. every disk mirrored into its export
        t0 = time.monotonic()
        url_of = {d.id: urls[dd.id]                   # (libvirt names vda, vdb...)
                  for d, dd in zip(src.drives, dst.drives, strict=True)}
        jobs, _ = start_together(
            lab, src, lambda d: src.mirror(d.id, url_of[d.id], "raw", mode="existing",
                                           speed=self.speed, copy_mode=self.copy_mode,
                                           on_target_error=self.on_target_error), src.drives)
        if self.fault == "link_before_ready":
            time.sleep(0.3)
            return self._fault(lab, src, jobs, lambda: _cut_links(rec, proxies))
        v["ready_s_per_disk"] = []
        for job in jobs:
            try:
                job.wait_ready(max(1.0, self.ready_timeout - (time.monotonic() - t0)),
                               give_up_when=self.give_up_when,
                               stall_timeout=self.stall_timeout, mark=rec.mark)
            except WaitTimeout as err:       # never READY: diverging, stalled, too slow
                return {**v, **self._not_ready(lab, src, dst, jobs, job, err, proxies)}
            rec.mark(marks.READY_SEEN, job=job.id)
            v["ready_s_per_disk"].append(round(time.monotonic() - t0, 3))
        v["time_to_ready_s"] = max(v["ready_s_per_disk"])
        t_ready = time.monotonic()
        time.sleep(self.ready_s)
        if self.fault == "link_after_ready":
            return {**v, **self._fault(lab, src, jobs, lambda: _cut_links(rec, proxies))}
        if self.libvirt:
            # libvirt will not migrate to its own host: every disk cut at one point instead
            self.t_cut, self.t_switch, outcomes = cut_at_ready(lab, src, jobs)
            if len(jobs) > 1:
                wait_begun_on_all(src, len(jobs), surely_after_cut(self.t_cut, self.t_switch),
                                  timeout=30)
            return {**v, "outcome": "mirrored and cut", "migration_status": "not run (libvirt)",
                    "jobs_completed": all(o.event == marks.BLOCK_JOB_COMPLETED and o.ok
                                          for o in outcomes),
                    "cut_stopped_s": round(self.t_switch - self.t_cut, 3)}
        # 3. RAM and device state
        series = _MigrationSeries(src, rec.now, lab.options.sample_interval)
        t_mig = time.monotonic()
        with series:
            _migrate(src, dst, self.max_bandwidth, self.downtime_limit_ms, rec)
            if self.fault == "dest_dies":
                time.sleep(0.1)
                rec.mark(marks.DEST_KILLED)
                dst.kill()
            elif self.fault == "migrate_cancel":
                time.sleep(0.1)
                rec.mark(marks.MIGRATE_CANCEL)
                src.qmp("migrate_cancel")
            status = _wait_migration(src, self.migrate_timeout, series, rec)
        v["migration_status"] = status
        v["migration_s"] = round(time.monotonic() - t_mig, 3)
        self.t_switch = time.monotonic()
        v.update(series.final())
        series.save(lab.run.path / MIGRATION_FILE)
        if self.fault != "none":
            return {**v, **self._fault(lab, src, jobs, None)}
        if status != "completed":
            for job in jobs:
                job.cancel(force=True)
            return v
        # 4. the handover
        v.update(_handover(lab, src, dst, jobs, self.t_switch, self.after_s))
        if self.source_after == "quit":
            src.shutdown()
            rec.mark(marks.SOURCE_QUIT)
        v["source_gone"] = not src.running
        v["guest_gap_s"] = _guest_gap(src, dst, t_mig)
        v["dd_latency_ms"] = _latency_by_phase(src, dst, t0, t_ready, t_mig)
        v.update(_job_errors(src))
        return v

    def _not_ready(self, lab: LabRun, src: Machine, dst: Machine, jobs: list[Job], job: Job,
                   err: WaitTimeout, proxies: dict[str, NbdkitProxy]) -> dict[str, Any]:
        """A disk never got READY: say why (the predictor's last word), cancel every
        mirror, and check that the source lives on; no migration is tried.  A cancel waits
        for the requests in flight, which a slow link answers in minutes: after 5 s the
        link is closed (as an aborted migration closes it), so they fail at once."""
        outlook = job.outlook
        lab.recorder.mark(marks.DISKS_NOT_READY, job=job.id, why=str(err))
        for j in jobs:
            if j.ended is None:
                j.cancel(force=True)
        if any(not _ended(j, 5.0) for j in jobs):
            if proxies:
                _cut_links(lab.recorder, proxies)
            else:
                lab.recorder.mark(marks.LINK_DOWN)
                dst.qmp("nbd-server-stop")
            for j in jobs:
                j.wait_done(30)
        t = time.monotonic()
        time.sleep(1.0)
        alive = src.backend.run_state() == "running" and len(src.guest_ops(since=t)) > 0
        return {**_job_errors(src), "outcome": "disks never READY", "not_ready_job": job.id,
                "disk_outlook": outlook.text() if outlook is not None else None,
                "migration_status": "not started", "source_survives": alive,
                "pass": False, "reason": f"{job.id} never READY: {err}"}

    def _fault(self, lab: LabRun, src: Machine, jobs: list[Job],
               act: Callable[[], None] | None) -> dict[str, Any]:
        """Do the fault (*act*: None when it was done already), watch the source for 3 s:
        what QEMU reported, what became of the mirrors, and does the VM live on?"""
        since = len(src.backend.events)
        t = time.monotonic()
        if act is not None:
            act()
        time.sleep(3.0)
        events = src.backend.events.snapshot()[since:]
        errors = [dict(e.data) for e in events if e.name == marks.BLOCK_JOB_ERROR]
        out: dict[str, Any] = {
            "fault": self.fault, "on_target_error": self.on_target_error,
            "job_error_events": len(errors),
            "error_actions": sorted({str(e.get("action")) for e in errors}),
            "jobs_after": {job.id: _job_state(job) for job in jobs},
            "source_state": src.backend.run_state(),
            "guest_ops_after_fault": len(src.guest_ops(since=t)),
        }
        if self.on_dest_death == "cancel":
            for job in jobs:
                if job.ended is None:
                    lab.recorder.mark(marks.CANCEL, job=job.id, reason=self.fault)
                    job.cancel(force=True)
                    job.wait_done(30)
        out["mirrors"] = "cancelled" if self.on_dest_death == "cancel" else "kept"
        out["source_survives"] = (out["source_state"] == "running"
                                  and out["guest_ops_after_fault"] > 0)
        out["pass"] = out["source_survives"]
        return out


def _ended(job: Job, timeout: float) -> bool:
    """Did *job* end within *timeout* s?"""
    try:
        job.wait_done(timeout)
    except WaitTimeout:
        return False
    return True


def _job_state(job: Job) -> str:
    """A job in a few words: ``ready, io-status ok``, ``paused, io-status failed``, or how it
    ended (``ended: <QEMU's error>``)."""
    if job.ended is not None:
        err = job.ended.data.get("error")
        return f"ended: {err}" if err else f"ended: {job.ended.name}"
    info = job.info()
    return "gone" if info is None else f"{info.status}, io-status {info.io_status}"


def _cut_links(rec: Any, proxies: dict[str, NbdkitProxy]) -> None:
    """The NBD link dies: every nbdkit proxy killed (marked ``link_down``)."""
    rec.mark(marks.LINK_DOWN)
    for p in proxies.values():
        p.kill()


def _guest_gap(src: Machine, dst: Machine, since: float) -> float | None:
    """The downtime as the guest's work shows it: the longest pause, in host time, between
    two of its operations from the migration's start on (the source's, then the
    destination's)."""
    times = sorted([r.mono for r in src.guest_ops(since=since)] +
                   [r.mono for r in dst.guest_ops()])
    gaps = [b - a for a, b in zip(times, times[1:])]
    return round(max(gaps), 3) if gaps else None


def _latency_by_phase(src: Machine, dst: Machine, t0: float, t_ready: float,
                      t_mig: float) -> dict[str, float | None]:
    """The median latency (ms) of the guest's dd writes with their fsync, by phase: before
    the mirrors, while they copy, at READY, and on the destination."""
    def median(records: list[Any]) -> float | None:
        us = sorted(int(r.data["dd_us"]) for r in records if "dd_us" in r.data)
        return round(us[len(us) // 2] / 1000, 1) if us else None
    return {"before": median(src.guest_ops(until=t0)),
            "copying": median(src.guest_ops(since=t0, until=t_ready)),
            "ready": median(src.guest_ops(since=t_ready, until=t_mig)),
            "destination": median(dst.guest_ops())}


def _handover(lab: LabRun, src: Machine, dst: Machine, jobs: list[Job], t_switch: float,
              after_s: float) -> dict[str, Any]:
    """The source's last syncs (its mirrors cancelled at READY: COMPLETED), the NBD server
    stopped, the destination continued; then does its guest keep working?"""
    rec = lab.recorder
    rec.mark(marks.HANDOVER)
    for job in jobs:
        rec.mark(marks.CANCEL, job=job.id)
        job.cancel()
    outcomes = [job.wait_done(60) for job in jobs]
    dst.qmp("nbd-server-stop")
    lab.note_machine(dst, "dest")          # its console, events and jobs from now on
    t_cont = time.monotonic()
    dst.cont()
    rec.mark(marks.CONT, machine="dest")
    try:
        dst.wait_ops(2, None, after=t_cont, timeout=max(after_s, 30))
    except WaitTimeout:
        pass
    time.sleep(after_s)
    return {"handover_s": round(t_cont - t_switch, 3), "job_ends": [o.event for o in outcomes],
            "jobs_completed": all(o.event == marks.BLOCK_JOB_COMPLETED and o.ok
                                  for o in outcomes),
            # what the mirrors moved: each job's offset when it ended (every disk's length,
            # its zero areas sent as zero requests without data, plus what the guest
            # dirtied again and was copied once more)
            "disk_copied_mib": round(sum(o.offset for o in outcomes) / MIB, 2),
            "source_state": src.backend.run_state(),
            "dest_ops_after": len(dst.guest_ops(since=t_cont)),
            "dest_state": dst.backend.run_state()}


def _disks(lab: LabRun, image_mib: int, fill_mib: int, data_disks: int
           ) -> tuple[list[Drive], list[Drive], list[Manifest]]:
    """The source's disks (with data), the destination's (empty, the same sizes), and what
    each source disk holds."""
    cache = lab.options.cache
    system = lab.workdir / "drive0.qcow2"
    src = [Drive(system, "drive0", "qcow2", cache)]
    bases = [make_guest_disk(system, image_mib, "qcow2", fill_mib)]
    for k in range(1, data_disks + 1):
        drive, base = data_drive(lab.workdir, k, fill_mib=fill_mib // 2, cache=cache)
        src.append(drive)
        bases.append(base)
    dst = [dataclasses.replace(d, path=images.create(
        lab.workdir / f"dest-{d.id}.qcow2", int(images.info(d.path)["virtual-size"]), "qcow2"))
        for d in src]
    return src, dst, bases



def _serve(dst: Machine, transport: str) -> tuple[dict[str, str], Path | tuple[str, int]]:
    """Start the destination's NBD server and export every disk writable (named by the
    disk's id); the URL of each export, and where the server listens."""
    assert dst.tmpdir is not None
    upstream: Path | tuple[str, int]
    if transport == "unix":
        upstream = dst.tmpdir / "nbd.sock"
        dst.qmp("nbd-server-start", {"addr": {"type": "unix",
                                                "data": {"path": str(upstream)}}})
        url = f"nbd+unix:///{{export}}?socket={upstream}"
    else:
        for attempt in range(5):
            # a port free a moment ago; another process may take it first: then another
            port = _free_port()
            try:
                dst.qmp("nbd-server-start", {"addr": {"type": "inet", "data": {
                    "host": "127.0.0.1", "port": str(port)}}})
                break
            except BackendError as err:
                if "in use" not in str(err) or attempt == 4:
                    raise
        upstream = ("127.0.0.1", port)
        url = f"nbd://127.0.0.1:{port}/{{export}}"
    urls = {}
    for d in dst.block_info():
        if d.device and d.node_name:
            dst.qmp("block-export-add", {"type": "nbd", "id": f"export-{d.device}",
                                           "node-name": d.node_name, "name": d.device,
                                           "writable": True})
            urls[d.device] = url.format(export=d.device)
    return urls, upstream


def _proxies(stack: ExitStack, upstream: Path | tuple[str, int], exports: list[str],
             delay_write_ms: int, rate_bps: int, error_rate: float) -> dict[str, NbdkitProxy]:
    """An nbdkit proxy per export, started (and stopped with *stack*)."""
    return {e: stack.enter_context(NbdkitProxy(upstream, e, delay_write_ms=delay_write_ms,
                                               rate_bps=rate_bps, error_rate=error_rate))
            for e in exports}


def _job_errors(src: Machine) -> dict[str, Any]:
    """The mirrors' ``BLOCK_JOB_ERROR`` events so far on the source: how many, which actions."""
    errors = [dict(e.data) for e in src.backend.events.snapshot()
              if e.name == marks.BLOCK_JOB_ERROR]
    return {"job_error_events": len(errors),
            "error_actions": sorted({str(e.get("action")) for e in errors})}


def _free_port() -> int:
    """A TCP port on 127.0.0.1 free a moment ago (the destination binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _migrate(src: Machine, dst: Machine, max_bandwidth: int, downtime_limit_ms: int,
             rec: Any) -> None:
    """Events on both sides, the user's limits on the source, the destination listening,
    then ``migrate`` over a unix socket in the destination's private folder."""
    assert dst.tmpdir is not None
    caps = [{"capability": "events", "state": True}]
    for vm in (src, dst):
        vm.qmp("migrate-set-capabilities", {"capabilities": caps})
    limits: dict[str, Any] = {}
    if max_bandwidth:
        limits["max-bandwidth"] = max_bandwidth
    if downtime_limit_ms:
        limits["downtime-limit"] = downtime_limit_ms
    if limits:
        src.qmp("migrate-set-parameters", limits)
    uri = f"unix:{dst.tmpdir / 'migration.sock'}"
    dst.qmp("migrate-incoming", {"uri": uri})
    rec.mark(marks.MIGRATE, **limits)
    src.qmp("migrate", {"uri": uri})


def _wait_migration(src: Machine, timeout: float, series: _MigrationSeries, rec: Any) -> str:
    """The source's migration status once it ends: ``completed``, ``failed``, ``cancelled``
    (or ``timed out``: then cancelled), from its ``MIGRATION`` events; the RAM predictor's
    "will not converge" marked (``ram_diverging``) when it is first said."""
    deadline = time.monotonic() + timeout
    said = False
    while time.monotonic() < deadline:
        died = src.died()
        if died:        # no status will come from a QEMU that is gone
            raise ConnectionLost(f"the source's QEMU died during the migration: {died}")
        outlook = series.ram.last
        if outlook is not None and outlook.state == "diverging" and not said:
            said = True
            rec.mark(marks.RAM_DIVERGING, text=outlook.text(),
                     dirty_rate=outlook.dirty_rate, transfer_rate=outlook.copy_rate)
        status = series.ended()
        if status is not None:
            return status
        time.sleep(0.05)
    src.qmp("migrate_cancel")
    return "timed out"


class _MigrationSeries:
    """``query-migrate`` on the source every *interval* s, on a thread of its own: the
    migration's time series beside the block jobs (``migration.parquet``).

    The series starts at the source's first ``MIGRATION`` event after it was made, and the
    migration's end is read from those events, never from ``query-migrate``: a source that
    was itself started from a migration stream (every VM kvmlab resumes from a saved
    state) answers ``completed``, its incoming migration's status, until the outgoing one
    has set itself up.  Read as the end, that would hand over while the source's guest
    still runs, and the destination's disks would miss what it writes from then on."""

    ENDS = ("completed", "failed", "cancelled")

    COLUMNS = ("status", "total-time", "expected-downtime", "downtime", "setup-time")
    RAM = ("transferred", "remaining", "total", "dirty-pages-rate", "mbps", "dirty-sync-count",
           "page-size")

    def __init__(self, vm: Machine, now: Any, interval: float) -> None:
        self.vm, self.now, self.interval = vm, now, max(interval, 0.05)
        self.since = len(vm.backend.events)          # events of this migration only
        self.rows: list[dict[str, Any]] = []
        self.ram = RamPredictor()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvmlab-migration", daemon=True)

    def __enter__(self) -> _MigrationSeries:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()                       # the final state (downtime is set at the end)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _event(self, statuses: tuple[str, ...] | None = None) -> str | None:
        """The status of this migration's first ``MIGRATION`` event (of *statuses*), if any."""
        for rec in self.vm.backend.events.snapshot(self.since):
            status = rec.data.get("status")
            if rec.name == "MIGRATION" and (statuses is None or status in statuses):
                return str(status)
        return None

    def ended(self) -> str | None:
        """``completed``, ``failed`` or ``cancelled`` once the source says so; else None."""
        return self._event(self.ENDS)

    def _sample(self) -> None:
        if self._event() is None:            # not begun: the status is an older one's
            return
        try:
            info = self.vm.qmp("query-migrate")
        except Exception:  # noqa: BLE001 - a sample lost is a gap, not a failure
            return
        ram = info.get("ram") or {}
        row = {"t": self.now(), **{k.replace("-", "_"): info.get(k) for k in self.COLUMNS},
               **{f"ram_{k.replace('-', '_')}": ram.get(k) for k in self.RAM}}
        outlook = ram_outlook(self.ram, row)
        with self._lock:
            self.rows.append({**row, "ram_state": outlook.state})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def final(self) -> dict[str, Any]:
        """The verdict's migration figures: downtime, RAM moved, samples."""
        last = self.rows[-1] if self.rows else {}
        said = self.ram.first_seen.get("diverging")
        start = self.rows[0]["t"] if self.rows else None
        return {"downtime_ms": last.get("downtime"),
                "ram_said_diverging_s": (round(said - start, 3) if said is not None
                                         and start is not None else None),
                "ram_outlook": self.ram.last.text() if self.ram.last is not None else None,
                "expected_downtime_ms": max((r.get("expected_downtime") or 0
                                             for r in self.rows), default=None),
                "ram_transferred_mib": round((last.get("ram_transferred") or 0) / MIB, 2),
                "migration_samples": len(self.rows)}

    def save(self, path: Path) -> None:
        if self.rows:
            self.frame().to_parquet(path, index=False)


def _both_sides(src: Machine, dst: Machine, base: Manifest, t_switch: float,
                disk: str) -> Manifest:
    """What a disk of the destination must hold: every operation the guest synced on the
    source before the switchover, then every one it synced on the destination after it."""
    manifest, _ = synced_manifest(src, base, until=t_switch, disk=disk)
    after, in_flight = synced_manifest(dst, None, disk=disk)
    for path, sha in after.files.items():
        manifest.add_file(path, sha)
    for path in after.dirs:
        manifest.apply("mkdir", path)
    for path in after.gone:
        manifest.apply("rm", path)
    for op in in_flight:
        manifest.mark_unknown(str(op["path"]))
    return manifest

