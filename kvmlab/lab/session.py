"""An interactive mirror session: one VM, jobs started and steered by hand, each recorded.

This is what the notebook panel (:mod:`kvmlab.lab.widgets`) drives, kept free of
any widget so it can be used and tested from plain Python:

- :meth:`Session.lab` launches a lab VM (the guest busy with its file
  operations); :meth:`Session.libvirt` attaches to an existing libvirt domain;
- :meth:`Session.start` starts a mirror and a :class:`~kvmlab.live.record.Recorder`
  in a new run folder (``data/runs/<run-id>/``);
- pause / resume / set_speed / cancel / complete steer the job; stop_vm /
  cont_vm pause the guest;
- a watcher thread notices the job's end, stops the recorder (parquet files),
  finishes ``run.json`` and computes the analysis summary -- independent of
  any display, so a broken display never loses a recording.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmlab import analysis, marks, paths
from kvmlab.backends.base import Backend
from kvmlab.errors import BadInput, StateError
from kvmlab.guest.workload import Workload
from kvmlab.live.jobs import Job, check_mirror, mirror
from kvmlab.live.record import Recorder
from kvmlab.model import JobInfo, MirrorSpec
from kvmlab.qemu import builds
from kvmlab.qemu.builds import QemuBuild
from kvmlab.qemu.caps import Capabilities, read_capabilities
from kvmlab.qemu.images import make_guest_disk
from kvmlab.qemu.trace import TraceSpec
from kvmlab.store.runs import RunData, RunDir, load_run
from kvmlab.vm import qemu_probe
from kvmlab.vm.machine import Machine, data_drive

log = logging.getLogger(__name__)

ACTIONS = ("start", "pause", "resume", "cancel", "complete", "stop_vm", "cont_vm")


@dataclass
class Finished:
    """A job that ended: its saved run and the analysis summary."""

    run_path: Path
    outcome: str
    error: str | None
    summary: dict[str, Any]
    data: RunData
    failures: list[str] = field(default_factory=list)
    #: what the end means for the target, in words (a point-in-time copy, a pivot...)
    meaning: str = ""
    #: the job's id (its device: ``drive0``, ``data1``...)
    job: str | None = None


def end_meaning(outcome: str, error: str | None, action: str | None, target: str,
                drive: str, forced: bool = False) -> str:
    """What a job's end means for its target: QEMU says BLOCK_JOB_COMPLETED both for a
    pivot and for a cancel after READY, which users read as the same thing.  *forced*: the
    cancel was sent with ``force`` (a paused job: QEMU refuses a plain cancel of one)."""
    if error:
        return f"failed ({error}): {target} is incomplete, not a usable copy"
    if forced and outcome == marks.BLOCK_JOB_CANCELLED:
        return (f"force-cancelled while paused (QEMU cancels a paused job only with force): "
                f"{target} is not a usable copy")
    if outcome == marks.BLOCK_JOB_COMPLETED and action == marks.CANCEL:
        return (f"cancelled after READY: {target} is a point-in-time copy of {drive} as of "
                "the cancel (QEMU reports the job as completed); the VM goes on using its "
                "source")
    if outcome == marks.BLOCK_JOB_COMPLETED:
        return f"completed (pivot): the VM now runs on {target}; the source is no longer used"
    if outcome == marks.BLOCK_JOB_CANCELLED:
        return f"cancelled before READY: {target} is incomplete, not a usable copy"
    return f"{outcome}: {target} may be incomplete"


def _cleanup(machine: Machine | None, scratch: Path | None) -> None:
    if machine is not None:
        machine.shutdown(hard=True)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


class Session:
    """One VM and the mirror jobs run on it by hand, one at a time, on any of its disks
    (*drives*; the first job's is *drive*).  Close it to stop what it started.

    For a job on each disk at once, :meth:`beside` opens more sessions on the same VM,
    one per disk: each runs and records its own job."""

    def __init__(self, backend: Backend, *, drive: str, machine: Machine | None = None,
                 scratch: Path | None = None, label: str = "vm",
                 runs_dir: str | Path | None = None, sample_interval: float = 0.1,
                 caps: Capabilities | None = None, drives: Sequence[str] = (),
                 owner: bool = True) -> None:
        self.backend = backend
        #: this session started (or attached) the VM and stops (or detaches) it at close;
        #: a session :meth:`beside` another is not, and leaves the VM alone
        self.owner = owner
        self._beside: list[Session] = []
        self.drive = drive
        #: the disks a job may mirror (the VM's own order)
        self.drives = list(drives) or [drive]
        self.machine = machine
        self.scratch = scratch
        self.label = label
        self.runs_dir = Path(runs_dir) if runs_dir else paths.runs_dir()
        self.sample_interval = sample_interval
        #: what this QEMU can do (a lab VM's build, or read over a libvirt domain's monitor)
        self.caps = caps if caps is not None or machine is None else qemu_probe.capabilities(machine.build)
        self.job: Job | None = None
        self.spec: MirrorSpec | None = None
        self._end_action: str | None = None         # the step that asked the job to end
        self._forced = False                         # ... and whether it forced a cancel
        self.recorder: Recorder | None = None
        self.run: RunDir | None = None
        self.finished: Finished | None = None
        self.on_finish: list[Callable[[Finished], None]] = []
        self._lock = threading.RLock()
        self._watch: threading.Thread | None = None
        self._closed = False
        self._qemu_version: str | None = None
        self._finalizer = weakref.finalize(self, _cleanup, machine if owner else None,
                                           scratch if owner else None)

    @property
    def qemu_version(self) -> str:
        """The QEMU the VM runs (``10.0.2``): its build's, or what its monitor says."""
        if self._qemu_version is None:
            self._qemu_version = (self.machine.build.version if self.machine is not None
                                  else self.backend.versions().get("qemu", "?"))
        return self._qemu_version

    @property
    def can_change(self) -> bool:
        """Whether this QEMU can switch a running mirror to write-blocking
        (``block-job-change``, QEMU 8.2+), as its capabilities say."""
        return self.caps is not None and self.caps.block_job_change

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def lab(cls, *, image_mib: int = 64, fill_mib: int = 16, workload_kib: int = 256,
            workload_rate_kib_s: float = 512, accel: str = "auto", cache: str = "none",
            runs_dir: str | Path | None = None, sample_interval: float = 0.1,
            boot_timeout: float = 120, qemu: str | Path | QemuBuild | None = None,
            data_disks: int = 0) -> Session:
        """Launch a lab VM whose guest works on its disk; return once it is busy.

        :param qemu: the QEMU build of the VM and its images (``system``, ``10.0``, a path).
        :param data_disks: data disks beside the system disk (0 to 3; ``data1``...), 32 MiB
            each, written by the guest every round: a job may mirror any of them.

        Its QEMU writes the mirror's trace events (:mod:`kvmlab.qemu.trace`) to the session's
        scratch folder; each job's run records those from its start in ``trace.parquet``.
        """
        build = builds.resolve(qemu)               # bad name: nothing is created
        if isinstance(data_disks, bool) or not isinstance(data_disks, int) \
                or not 0 <= data_disks <= 3:
            raise BadInput(f"data_disks={data_disks!r} must be an integer from 0 to 3")
        scratch = paths.scratch_dir() / \
            f"session-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        scratch.mkdir(parents=True)
        vm: Machine | None = None
        try:
            disk = scratch / "disk.qcow2"
            with builds.using(build):
                make_guest_disk(disk, image_mib, "qcow2", fill_mib)
                data = [data_drive(scratch, k, fill_mib=fill_mib // 2, cache=cache)[0]
                        for k in range(1, data_disks + 1)]
            vm = Machine(disk, mode="workload", cache=cache, accel=accel, name="kvmlab-panel",
                         qemu=build, extra_drives=data,
                         workload=Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s),
                         console_log=scratch / "console.log",
                         trace=TraceSpec(scratch / "trace.log"))
            vm.launch()
            vm.wait_guest("op", timeout=boot_timeout)
        except BaseException:
            _cleanup(vm, scratch)
            raise
        return cls(vm.backend, drive=vm.disk_id, machine=vm, scratch=scratch, label="lab",
                   runs_dir=runs_dir, sample_interval=sample_interval,
                   drives=[d.id for d in vm.drives])

    @classmethod
    def libvirt(cls, uri: str, domain: str, drive: str = "vda", **kw: Any) -> Session:
        """Attach to the running libvirt domain *domain* at *uri* (nothing is started)."""
        from kvmlab.backends.libvirt import LibvirtBackend
        be = LibvirtBackend(uri, domain)
        if drive not in {d.device for d in be.block_info()}:
            be.close()
            raise BadInput(f"domain {domain} has no disk {drive!r}")
        # the domain's QEMU is not one of kvmlab's builds: ask its monitor what it can do
        caps = read_capabilities(be.qmp("query-version"), be.qmp("query-qmp-schema"))
        disks = [d.device for d in be.block_info() if d.device and d.file]
        return cls(be, drive=drive, label=domain, caps=caps, drives=disks, **kw)

    def beside(self, drive: str) -> Session:
        """Another session on this VM, for a job on *drive* while this session's runs: one
        job per disk side by side, each started, steered and recorded on its own (its own
        run folder, its own summary).  The VM stays this session's: closing this session
        closes those beside it first."""
        if self._closed or not self.owner:
            raise StateError("open sessions beside the session that owns the VM, while it is open")
        if drive not in self.drives:
            raise BadInput(f"this VM's disks are {', '.join(self.drives)}, not {drive!r}")
        taken = [self.drive] + [s.drive for s in self._beside if not s._closed]
        if drive in taken:
            raise BadInput(f"disk {drive} already has a session; one job per disk")
        other = Session(self.backend, drive=drive, machine=self.machine, scratch=self.scratch,
                        label=self.label, runs_dir=self.runs_dir,
                        sample_interval=self.sample_interval, caps=self.caps,
                        drives=[drive], owner=False)
        self._beside.append(other)
        return other

    def default_target(self, fmt: str | None = "qcow2") -> Path:
        """A fresh target path in the session's scratch folder (or data/scratch), named
        after the disk (sessions side by side share the folder)."""
        folder = self.scratch or paths.scratch_dir()
        folder.mkdir(parents=True, exist_ok=True)
        n = 1
        while (folder / f"mirror-{self.drive}-{n}.{fmt or 'img'}").exists():
            n += 1
        return folder / f"mirror-{self.drive}-{n}.{fmt or 'img'}"

    # -- state -------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """A job runs (started and not ended)."""
        return self.job is not None and self.job.ended is None

    def info(self) -> JobInfo | None:
        return self.job.info() if self.active and self.job else None

    def vm_running(self) -> bool:
        return self.backend.run_state() == "running"

    def allowed(self, info: JobInfo | None = None, vm_state: str | None = None) -> set[str]:
        """Which actions make sense now (the panel enables just these buttons)."""
        if self._closed:
            return set()
        out: set[str] = set()
        state = vm_state or self.backend.run_state()
        out.add("cont_vm" if state == "paused" else "stop_vm")
        if not self.active:
            out.add("start")
            return out
        info = info if info is not None else self.info()
        if info is None:
            return out
        if info.paused:
            out |= {"resume", "cancel"}
        else:
            out |= {"pause", "cancel"}
            if info.ready:
                out.add("complete")
            if (info.type == "mirror" and self.job is not None
                    and self.job.copy_mode != "write-blocking" and self.can_change):
                out.add("active_mode")
        return out

    def _check(self, action: str) -> None:
        if action not in self.allowed():
            raise StateError(f"cannot {action.replace('_', ' ')} now")

    def _require(self, action: str) -> Job:
        """The running job, if *action* makes sense now (StateError if not)."""
        self._check(action)
        if self.job is None:
            raise StateError(f"cannot {action.replace('_', ' ')}: no job")
        return self.job

    # -- actions -----------------------------------------------------------------------
    def start(self, spec: MirrorSpec) -> Job:
        """Start a mirror per *spec*, with a recorder writing a new run folder."""
        with self._lock:
            if self.active:
                raise StateError("a job is already running in this session")
            if spec.device not in self.drives:
                raise BadInput(f"this VM's disks are {', '.join(self.drives)}, not "
                               f"{spec.device!r}")
            check_mirror(self.backend, spec)           # bad input: nothing is created
            self.drive = spec.device
            run = RunDir.create("panel_mirror", spec.as_dict(), self.runs_dir)
            if self.machine is not None:
                run.update(qemu=qemu_probe.recorded(self.machine.build))
            rec = Recorder(run.path, interval=self.sample_interval)
            try:
                rec.start()
                if self.machine is not None:
                    rec.attach_machine(self.machine, self.label, console_history=False)
                else:
                    rec.attach(self.backend, None, self.label)
                if not spec.is_remote:
                    rec.track("target", spec.target)
                rec.mark(marks.MIRROR_START, job=spec.device, target=spec.target)
                job = mirror(self.backend, spec, caps=self.caps)
            except BaseException as err:
                rec.stop()
                run.finish("error", error=f"{type(err).__name__}: {err}")
                raise
            run.update(backend=self.backend.name, versions=self.backend.versions(),
                       accel=self.machine.accel if self.machine else None)
            self.job, self.recorder, self.run, self.finished = job, rec, run, None
            self.spec, self._end_action, self._forced = spec, None, False
            self._watch = threading.Thread(target=self._watch_job, args=(job, rec, run),
                                           name="kvmlab-session-watch", daemon=True)
            self._watch.start()
            return job

    def _mark(self, name: str, **data: Any) -> None:
        if self.recorder is not None:
            self.recorder.mark(name, **data)

    def pause(self) -> None:
        job = self._require("pause")
        self._mark(marks.PAUSE, job=job.id)
        job.pause()

    def resume(self) -> None:
        job = self._require("resume")
        self._mark(marks.RESUME, job=job.id)
        job.resume()

    def cancel(self) -> None:
        """``block-job-cancel``; a paused job with ``force``, since QEMU refuses a plain
        cancel of a paused job ("is currently paused") and the panel offers Cancel there."""
        job = self._require("cancel")
        info = self.info()
        force = bool(info is not None and info.paused)
        self._end_action = marks.CANCEL
        self._forced = force
        self._mark(marks.CANCEL, job=job.id, force=force)
        job.cancel(force=force)

    def complete(self) -> None:
        job = self._require("complete")
        self._end_action = marks.COMPLETE
        self._mark(marks.COMPLETE, job=job.id)
        job.complete()

    def active_mode(self) -> None:
        """Switch the running mirror to write-blocking (QEMU 8.2+): guest writes reach
        the target before they complete, so a job the guest outpaces converges."""
        job = self._require("active_mode")
        self._mark(marks.COPY_MODE, job=job.id, copy_mode="write-blocking", reason="panel")
        job.change(copy_mode="write-blocking")

    def set_speed(self, speed: int) -> None:
        """Change the running job's limit (bytes/s, 0 = unlimited)."""
        if not self.active or self.job is None:
            raise StateError("no job is running")
        self._mark(marks.SET_SPEED, job=self.job.id, speed=speed)
        self.job.set_speed(speed)

    def stop_vm(self) -> None:
        """Pause the VM's vCPUs (HMP ``stop``); with or without a job."""
        self._check("stop_vm")
        self._mark(marks.STOP)
        self.backend.stop()

    def cont_vm(self) -> None:
        self._check("cont_vm")
        self._mark(marks.CONT)
        self.backend.cont()

    # -- the end of a job ---------------------------------------------------------------
    def _watch_job(self, job: Job, rec: Recorder, run: RunDir) -> None:
        while job.ended is None and not self._closed:
            time.sleep(0.1)
        self._finish(job, rec, run)

    def _finish(self, job: Job, rec: Recorder, run: RunDir) -> None:
        with self._lock:
            if run.meta.get("status") != "running":
                return
            rec.stop()
            end = job.ended
            error = end.data.get("error") if end is not None else "session closed"
            outcome = end.name if end is not None else "closed"
            run.finish("done" if end is not None else "interrupted",
                       {"pass": end is not None and not error, "job_end": outcome,
                        "job_error": error})
            data = load_run(run.path)
            try:                      # this job's (others may run beside it on the VM)
                summary = analysis.summarize(data, job.id)
            except Exception as err:  # noqa: BLE001 - the run is saved; report, do not lose it
                summary = {"summary_error": f"{type(err).__name__}: {err}"}
            target = self.spec.target if self.spec else "the target"
            meaning = end_meaning(outcome, error, self._end_action, str(target), self.drive,
                                  self._forced)
            fin = Finished(run.path, outcome, error, summary, data, meaning=meaning,
                           job=job.id)
            run.update(meaning=meaning)
        # the run is saved; now the display's callbacks (best effort), then publish
        for cb in list(self.on_finish):
            try:
                cb(fin)
            except Exception as err:  # noqa: BLE001 - display is best effort
                fin.failures.append(f"{type(err).__name__}: {err}")
                log.warning("finish callback failed: %s", err)
        self.finished = fin

    def wait_finished(self, timeout: float = 60) -> Finished:
        """Block until the current job's run is saved (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while self.finished is None:
            if time.monotonic() > deadline:
                raise StateError(f"job not finished after {timeout:g} s")
            time.sleep(0.05)
        return self.finished

    def close(self) -> None:
        """Cancel a running job, save its run, stop the lab VM, remove scratch.  Idempotent."""
        if self._closed:
            return
        for other in self._beside:                 # their jobs end before the VM does
            other.close()
        try:
            if self.active and self.job is not None:
                try:
                    self._mark(marks.CANCEL, job=self.job.id, reason="session closed")
                    self.job.cancel(force=True)
                    self.job.wait_done(30)
                except Exception:  # noqa: BLE001 - VM may be gone; still save the run
                    log.debug("cancel at close failed", exc_info=True)
            self._closed = True
            if self._watch is not None:
                self._watch.join(30)
            if self.job is not None and self.recorder is not None and self.run is not None:
                self._finish(self.job, self.recorder, self.run)
        finally:
            self._closed = True
            if self.owner and self.machine is None:
                self.backend.close()
            self._finalizer()
