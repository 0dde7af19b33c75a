"""Scaffolding shared by experiments: run folder + recorder + scratch dir, and verification."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import marks, paths, trust
from kvmlab.errors import BadInput, GuestFailed, JobError, NoSpace, WaitTimeout
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest import fio
from kvmlab.guest.workload import Manifest, Workload
from kvmlab.live.jobs import Job
from kvmlab.live.record import Recorder
from kvmlab.model import JobOutcome
from kvmlab.qemu import builds, trace
from kvmlab.qemu.images import file_size, sha256
from kvmlab.store.runs import FAILED, RunData, RunDir, load_run
from kvmlab.store.tmpdirs import disown, own
from kvmlab.vm import qemu_probe
from kvmlab.vm.machine import Drive, Machine, guest_dev

log = logging.getLogger(__name__)



def distinct_choices(values: Sequence[str], known: Sequence[str], what: str) -> tuple[str, ...]:
    """*values* as a tuple: at least one, each one of *known*, none twice (else one line
    naming the *what*, before anything is created)."""
    values = tuple(values)
    for v in values:
        if v not in known:
            raise BadInput(f"{what} {v!r} is not one of {', '.join(known)}")
    if not values:
        raise BadInput(f"give at least one {what}")
    if len(set(values)) != len(values):
        raise BadInput(f"give each {what} once: {' '.join(values)}")
    return values


@dataclass
class ExperimentResult:
    """What an experiment returns: where its run is, the verdict, and the data."""

    run_path: Path
    verdict: dict[str, Any]
    data: RunData

    @property
    def passed(self) -> bool:
        return bool(self.verdict.get("pass"))


class LabRun:
    """Context manager: a run folder, a started recorder and a scratch folder for images.

    *params* are the experiment's own parameters (an experiment passes its ``locals()``
    taken first thing; ``options`` among them is dropped); *options* the shared plumbing,
    recorded beside them in ``run.json``.  An experiment that cannot run on a backend says
    why in *unsupported* (backend -> reason): asking for it fails before anything exists.

    On exit the recorder is stopped (parquet written), ``run.json`` finished with the
    verdict (or the error), and the scratch folder removed unless ``keep_images``.
    Experiments set :attr:`verdict` before leaving the block.
    """

    def __init__(self, experiment: str, params: Mapping[str, Any],
                 options: RunOptions = DEFAULT_OPTIONS, *,
                 unsupported: Mapping[str, str] | None = None,
                 scratch: str | Path | None = None) -> None:
        why = (unsupported or {}).get(options.backend)
        if why:
            raise BadInput(f"{experiment} cannot run on the {options.backend} backend: {why}")
        self.options = options
        self.experiment = experiment
        self.params = {**{k: v for k, v in params.items() if k != "options"},
                       **options.recorded()}
        self.scratch_parent = Path(scratch) if scratch else paths.scratch_dir()
        self.verdict: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}
        #: the fio job every workload-mode VM of the run runs (None: file operations alone)
        self.fio = fio.parse(options.workload)

    def __enter__(self) -> LabRun:
        stack = ExitStack()
        # every QEMU program of the run (VMs, qemu-img, the NBD server) is this build's
        self.build = stack.enter_context(builds.using(self.options.qemu))
        trust.private_umask()                # run data may hold whatever the guest wrote
        with stack:                          # left open (pop_all) once everything started
            self.trace_events = trace.parse_spec(self.options.trace)
            if self.trace_events != trace.DEFAULT_EVENTS:   # the user's names: checked now
                trace.check(self.trace_events, self.build)
            self.extra["qemu"] = qemu_probe.recorded(self.build)
            self.run = RunDir.create(self.experiment, self.params, self.options.runs_dir,
                                     self.options.run_path)
            self.workdir = self.scratch_parent / self.run.meta["run_id"]
            try:
                trust.private_dir(self.scratch_parent, "scratch folder")
                self.workdir.mkdir(mode=0o700)
                own(self.workdir, run=self.run.path)   # reaped, run marked killed, if we are killed
                self.recorder = Recorder(self.run.path, interval=self.options.sample_interval)
                self.recorder.start()
            except BaseException:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.run.finish("error", error="could not start the recorder")
                raise
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        with self._stack:                    # the build is released whatever happens below
            self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        stop_error: BaseException | None = None
        try:
            frames = self.recorder.stop()
            if self.fio is not None:
                self._keep_guest_io(frames["events"])
        except BaseException as err:  # noqa: BLE001 - said in run.json, raised below
            stop_error = err
        if not self.options.keep_images:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            disown(self.workdir)
        failure = exc if exc is not None else stop_error
        if isinstance(failure, OSError) and trust.is_no_space(failure):
            failure = NoSpace(f"no space left on {Path(failure.filename or self.run.path).parent}"
                              f" while writing {Path(failure.filename or 'run data').name}")
        if failure is None:
            status = "done"
        elif isinstance(failure, KeyboardInterrupt):
            status = "interrupted"
        elif isinstance(failure, NoSpace):
            status = FAILED                   # the record is not whole: no verdict holds
        else:
            status = "error"
        fields: dict[str, Any] = dict(self.extra)
        if failure is not None:
            fields["error"] = str(failure) if isinstance(failure, NoSpace) else \
                f"{type(failure).__name__}: {failure}"
        if self.options.keep_images:
            fields["images"] = str(self.workdir)
        self.run.finish(status, self.verdict, **fields)
        if exc is None and failure is not None:
            raise failure
        if isinstance(failure, NoSpace) and failure is not exc:
            raise failure from exc

    def _keep_guest_io(self, events: pd.DataFrame) -> None:
        """Write ``guest_io.parquet`` from the guests' fio lines; say in run.json what fio
        did.  fio failing in the guest (a job file it refused) fails the run."""
        assert self.fio is not None
        io = fio.guest_io(events)
        why = fio.failure(events)
        self.extra["fio"] = {"job": self.fio.name, "seconds": len(io), "error": why}
        if not io.empty:
            with trust.writing(self.run.path, fio.GUEST_IO_FILE):
                io.to_parquet(self.run.path / fio.GUEST_IO_FILE, index=False)
        if why is not None:
            raise GuestFailed(f"fio in the guest failed ({self.fio.name}): {why}")

    def result(self) -> ExperimentResult:
        return ExperimentResult(self.run.path, self.verdict or {}, load_run(self.run.path))

    def machine(self, disk: Path | Drive, label: str, *, embedded: bool = False,
                **kwargs: Any) -> Machine:
        """A lab VM on this run's backend (embedded QEMU, or a transient libvirt domain;
        *embedded*: QEMU run by kvmlab whatever the backend, as a storage migration's
        destination), with the options' cache mode and accelerator unless *kwargs* say
        otherwise; its console goes to ``console-<label>.log`` in the run folder, its QEMU
        trace events (unless ``trace=off``) to ``trace-<label>.log`` there (then
        ``trace.parquet``)."""
        kwargs.setdefault("cache", self.options.cache)
        kwargs.setdefault("accel", self.options.accel)
        if kwargs.get("mode") == "workload" and self.fio is not None:
            kwargs.setdefault("fio", self.fio)
        if self.trace_events:
            kwargs.setdefault("trace", trace.TraceSpec(self.run.path / f"trace-{label}.log",
                                                       self.trace_events))
        if self.options.backend == "libvirt" and not embedded:
            from kvmlab.vm.libvirt_lab import LibvirtMachine
            kwargs.pop("accel")  # libvirt lab domains are type='qemu' (TCG)
            return LibvirtMachine(disk, console_log=self.run.path / f"console-{label}.log",
                                  name=f"kvmlab-{label}", uri=self.options.libvirt_uri,
                                  **kwargs)
        return Machine(disk, console_log=self.run.path / f"console-{label}.log",
                       name=f"kvmlab-{label}", **kwargs)

    def note_machine(self, vm: Machine, label: str) -> None:
        """Attach the recorder to *vm* and remember its accel/guest in run.json; a VM that
        runs fio is returned once fio reports its first second (what follows happens under
        its load), or its failure is raised (:func:`wait_fio`)."""
        self.recorder.attach_machine(vm, label)
        if vm.fio is not None:
            wait_fio(vm)
        machines = self.extra.setdefault("machines", {})
        machines[label] = {"accel": vm.accel, "command": vm.command, "backend": self.options.backend,
                           "kernel": vm.guest.kernel_version, "cache": vm.drives[0].cache
                           if vm.drives else None}
        self.extra["accel"] = vm.accel
        self.extra["backend"] = self.options.backend
        self.extra["guest_kernel"] = vm.guest.kernel_version


def verify_image(lab: LabRun, image: Path, manifest: Manifest, *, label: str = "verify",
                 cache: str | None = None, timeout: float = 180) -> dict[str, Any]:
    """Boot a new VM from *image* in verify mode; return the guest's verdict as a dict.

    The manifest (files with sha256, directories present, paths gone) reaches
    the guest through fw_cfg; the guest checks each entry and powers off.
    """
    manifest.write(lab.run.path / f"manifest-{label}.txt")
    t0 = time.monotonic()
    with lab.machine(image, label, mode="verify", manifest=manifest,
                     cache=cache or lab.options.cache) as vm:
        lab.note_machine(vm, label)
        rec = vm.wait_guest("verdict", timeout=timeout)
        records = vm.console.records.snapshot()
        bad = [dict(r.data) for r in records if r.name == "check"]
        states = [dict(r.data) for r in records if r.name == "state"]
        vm.wait_exit(30)
    return {"verify_pass": rec.data.get("verdict") == "pass",
            "checked": int(rec.data.get("checked", 0)), "bad": int(rec.data.get("bad", 0)),
            "bad_items": bad[:50], "verify_s": round(time.monotonic() - t0, 3),
            "manifest_entries": len(manifest), "in_flight_found": states}


#: how late a line the guest wrote may reach the host (the serial port under TCG, QEMU's
#: chardev, the reader thread), on a host busy with three test workers: in one run the
#: guest's lines arrived 20-50 ms behind its own clock, and a ``begin`` it wrote before a
#: cancel landed arrived 14 ms after the job's end
CONSOLE_LAG_S = 0.25


def surely_after_cut(until: float, resumed: float) -> float:
    """From when a ``begin`` line the host receives is surely of an operation begun after a
    cut made with the VM stopped from *until* to *resumed*: a line the guest wrote before
    the stop may arrive up to :data:`CONSOLE_LAG_S` after it."""
    return max(resumed, until + CONSOLE_LAG_S)


def synced_manifest(vm: Machine, base: Manifest | None = None, until: float | None = None,
                    *, disk: str = "vda", absent_from: float | None = None,
                    settled: float | None = None) -> tuple[Manifest, list[dict[str, Any]]]:
    """What a copy of guest disk *disk* cut at host time *until* (default: now) must hold,
    and the ops in flight.

    An ``op`` line is printed after the guest's ``sync`` returned, so every op
    that arrived before *until* is on the image.  An operation that had begun
    (``begin`` line) but was not confirmed is in flight: its path may be in
    either state, so the manifest expects nothing of it and the verifier
    reports what it finds there.

    *settled* (host time): when the cut took effect (the job's end arrived); a cancel sent
    at *until* lands a moment later, so an operation the guest began between the two may
    be in the copy or not: its path is in flight too.  So is one whose ``begin`` line
    arrived up to :data:`CONSOLE_LAG_S` after the cut (*settled*, else *until*): the guest
    may have begun it before, its line still on the way.

    *absent_from* (host time): a copy known to be cut before it (the guest was stopped
    from *until* to *absent_from*) must not hold any path the guest first touched after
    it (its ``begin`` line arriving from :func:`surely_after_cut` on): such paths are
    expected gone, so the check bounds the cut from both sides.
    """
    records = [r for r in vm.console.records.snapshot()
               if {"op", "path", "n", "t"} <= set(r.data) and r.data.get("disk", "vda") == disk]
    before = [r for r in records if until is None or r.mono < until]
    done = [dict(r.data) for r in before if r.name == "op" and "sha256" in r.data]
    # a begin is confirmed by the next op line of the same operation, not by any: after a
    # reboot the workload counts from 1 again and repeats earlier (op, path, n) triples
    pending: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in before:
        key = (r.data["op"], r.data["path"], r.data.get("n"))
        if r.name == "begin":
            pending[key] = dict(r.data)
        elif r.name == "op":
            pending.pop(key, None)
    in_flight = list(pending.values())
    if until is not None:
        end = (until if settled is None else settled) + CONSOLE_LAG_S
        in_flight += [dict(r.data) for r in records
                      if r.name == "begin" and until <= r.mono < end]
    manifest = Manifest.from_ops(done, base=base, in_flight=in_flight)
    if absent_from is not None:
        after = absent_from if until is None else surely_after_cut(until, absent_from)
        seen = {str(r.data["path"]) for r in records if r.mono < after}
        seen |= set(manifest.files) | manifest.dirs | manifest.unknown
        for r in records:
            if r.mono >= after and r.name == "begin" and str(r.data["path"]) not in seen:
                manifest.gone.add(str(r.data["path"]))
    return manifest, in_flight


def snapshot_image(path: Path) -> dict[str, Any]:
    """Size and content hash of an image file now (to show it no longer changes)."""
    fs = file_size(path)
    return {"path": str(path), "exists": fs is not None,
            "apparent": fs.apparent if fs else None, "allocated": fs.allocated if fs else None,
            "sha256": sha256(path) if fs else None}


def unchanged(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same size and content in two :func:`snapshot_image` results."""
    return bool(a["exists"] and b["exists"] and a["sha256"] == b["sha256"]
                and a["apparent"] == b["apparent"])


def wait_fio(vm: Machine, timeout: float = 90) -> None:
    """Wait until the guest's fio prints its first second of results.

    :raise GuestFailed: fio could not start or exited (a job file it refused), with its
        words, or the VM stopped first.
    :raise WaitTimeout: no word from fio within *timeout* s.
    """
    assert vm.fio is not None
    deadline = time.monotonic() + timeout
    while True:
        records = vm.console.records.snapshot()
        why = fio.failure_of((r.name, r.data) for r in records)
        if why is not None:
            raise GuestFailed(f"fio in the guest failed ({vm.fio.name}): {why}")
        if any(r.name == "fio_status" for r in records):
            return
        if not vm.running:
            raise GuestFailed(f"the VM stopped before its fio ({vm.fio.name}) started")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"fio ({vm.fio.name}) said nothing in the guest within "
                              f"{timeout:g} s")
        time.sleep(0.1)


@contextmanager
def busy_vm(lab: LabRun, disk: Path | Drive, workload: Workload, *, label: str = "vm",
            **kwargs: Any) -> Iterator[Machine]:
    """A lab VM in workload mode, recorded, once the guest has made its first operation."""
    with lab.machine(disk, label, mode="workload", workload=workload, **kwargs) as vm:
        lab.note_machine(vm, label)
        vm.wait_guest("op", timeout=120)
        yield vm


def complete_and_wait(lab: LabRun, job: Job, what: str, timeout: float = 60) -> JobOutcome:
    """``block-job-complete`` (marked in the recording); raise JobError if the job failed."""
    lab.recorder.mark(marks.COMPLETE, job=job.id)
    job.complete()
    outcome = job.wait_done(timeout)
    if not outcome.ok:
        raise JobError(f"{what} ended with {outcome.error}")
    return outcome


def drive_to_ready(lab: LabRun, job: Job, timeout: float,
                   restart: Callable[[], Job] | None = None, max_restarts: int = 3,
                   poll: float = 0.1) -> tuple[Job, list[dict[str, Any]]]:
    """Bring *job* to ready after a fault, by the documented recovery steps; return the
    (possibly new) job and the steps taken (each also marked in the recording).

    - a job paused by an error (``on-target-error=stop``/``enospc``: status ``paused``,
      io-status ``failed`` or ``nospace``) is resumed (``block-job-resume``);
    - a job that ended with an error is started again by *restart* (a new mirror onto
      the same target, ``mode=existing``), at most *max_restarts* times.

    :raise WaitTimeout: not ready within *timeout* seconds.
    :raise JobError: the job ended with an error and there is no *restart* left.
    """
    steps: list[dict[str, Any]] = []
    rec = lab.recorder
    deadline = time.monotonic() + timeout
    while True:
        end = job.ended
        if end is not None:
            err = end.data.get("error")
            if not err or restart is None or max_restarts <= 0:
                raise JobError(f"{job.id} ended ({end.name}{': ' + err if err else ''}) "
                               "before it was ready")
            max_restarts -= 1
            t = rec.mark(marks.REMIRROR, job=job.id, after_error=err)
            steps.append({"step": "remirror", "t": t, "after_error": err})
            job = restart()
        elif job.is_ready:
            return job, steps
        else:
            info = job.info()
            if info is not None and info.paused and info.io_status != "ok":
                t = rec.mark(marks.RESUME_AFTER_ERROR, job=job.id, io_status=info.io_status)
                steps.append({"step": "resume", "t": t, "io_status": info.io_status})
                job.resume()
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{job.id} not ready {timeout:g} s after the fault")
        time.sleep(poll)


def cancel_after(lab: LabRun, job: Job, seconds: float) -> tuple[float, JobOutcome]:
    """Let the guest work *seconds* more in the ready state, then ``block-job-cancel``
    (marked); returns the cut-off (host monotonic time) and how the job ended."""
    time.sleep(seconds)
    lab.recorder.mark(marks.CANCEL, job=job.id)
    t_cut = time.monotonic()
    job.cancel()
    return t_cut, job.wait_done(60)


def fault_behaviour(effect: dict[str, Any], steps: list[dict[str, Any]],
                    error_events: int = 0) -> str:
    """One word for what the job did in a fault window (*effect* from
    :func:`kvmlab.analysis.fault_effect`, *steps* from :func:`drive_to_ready`):

    failed (it ended on the error: a new mirror was needed) / paused (it stopped on the
    error, or was seen paused) / ignored (errors reported, the copy went on) / stalled (no
    progress for at least half the window; a window ends once the fault is gone, so the job
    may resume just before its end) / slowed (it progressed) / unaffected (never sampled).
    """
    if any(s["step"] == "remirror" for s in steps):
        return "failed"
    if any(s["step"] == "resume" for s in steps) or "paused" in effect["statuses"]:
        return "paused"
    if error_events:
        return "ignored"
    if effect["statuses"] and effect["stall_s"] >= effect["window_s"] / 2:
        return "stalled"
    return "slowed" if effect["samples_in_window"] else "unaffected"


def wait_begun_on_all(vm: Machine, disks: int, since: float, timeout: float) -> None:
    """Wait until the guest has begun a new operation on each of its first *disks* disks
    after host time *since* (after a stopped cut: :func:`surely_after_cut`)."""
    want = {guest_dev(i) for i in range(disks)}
    deadline = time.monotonic() + timeout
    while True:
        seen = {r.data.get("disk", "vda") for r in vm.console.records.snapshot()
                if r.name == "begin" and r.mono >= since}
        if want <= seen:
            return
        if time.monotonic() > deadline:
            raise WaitTimeout(f"the guest wrote to {', '.join(sorted(seen)) or 'no disk'} of "
                              f"{', '.join(sorted(want))} in the {timeout:g} s after the cut")
        vm.wait_ops(1, None, after=time.monotonic(), timeout=max(0.1, deadline - time.monotonic()))


@contextmanager
def vm_stopped(lab: LabRun, vm: Machine, reason: str) -> Iterator[None]:
    """The VM's vCPUs stopped for the block (marked ``stop`` and ``cont`` in the record):
    what QEMU does in that block happens at one point in the guest's life.  QEMU's
    ``transaction`` has no mirror action, so this is how several mirrors start, or are
    cut, together."""
    lab.recorder.mark(marks.STOP, reason=reason)
    vm.stop()
    try:
        yield
    finally:
        vm.cont()
        lab.recorder.mark(marks.CONT)


def start_together(lab: LabRun, vm: Machine, start: Callable[[Drive], Job],
                   drives: Sequence[Drive]) -> tuple[list[Job], float]:
    """Start a mirror of each of *drives* (``start(drive)``); several at one point of the
    guest's life, with the VM stopped around the starts.  Returns the jobs and how long the
    VM was stopped (0 for one drive)."""
    if len(drives) == 1:
        lab.recorder.mark(marks.MIRROR_START, job=drives[0].id)
        return [start(drives[0])], 0.0
    jobs: list[Job] = []
    t0 = time.monotonic()
    with vm_stopped(lab, vm, "start every mirror at one point"):
        for d in drives:
            lab.recorder.mark(marks.MIRROR_START, job=d.id)
            jobs.append(start(d))
    return jobs, time.monotonic() - t0


def cut_at_ready(lab: LabRun, vm: Machine, jobs: list[Job]) -> tuple[float, float, list[JobOutcome]]:
    """Cancel every job at READY; returns (cut-off, resume time, outcomes).

    One disk: the seed's ``block_job_cancel`` while the guest runs; the cut lands between
    the cancel and the job's end (the second time).  Several: the VM is stopped first, so
    every copy is cut at the same point in the guest's life, then every job is cancelled
    and waited for, then the VM continues (the second time)."""
    rec = lab.recorder
    if len(jobs) == 1:
        rec.mark(marks.CANCEL, job=jobs[0].id)
        t_cut = time.monotonic()
        jobs[0].cancel()
        outcome = jobs[0].wait_done(60)
        return t_cut, time.monotonic(), [outcome]
    with vm_stopped(lab, vm, "cut every disk at one point"):
        t_cut = time.monotonic()
        for job in jobs:
            rec.mark(marks.CANCEL, job=job.id)
            job.cancel()
        outcomes = [job.wait_done(60) for job in jobs]
    return t_cut, time.monotonic(), outcomes
