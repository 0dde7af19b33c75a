"""Block-job handles over any backend: mirror, wait for ready, cancel, complete, pause...

Waits are driven by QMP events (BLOCK_JOB_READY, BLOCK_JOB_COMPLETED,
BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR, JOB_STATUS_CHANGE) that the backend
puts in its event log; completion is gated on the job's *ready* state, never
on offset == len.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmlab import marks
from kvmlab.backends.base import Backend
from kvmlab.errors import BackendError, BadInput, JobDiverging, JobError, JobStalled, StateError, WaitTimeout
from kvmlab.events import Record
from kvmlab.live.predictor import Outlook, Predictor
from kvmlab.model import COPY_MODES, JobInfo, JobOutcome, MirrorSpec, check_speed

if TYPE_CHECKING:
    from kvmlab.qemu.caps import Capabilities

END_EVENTS = marks.JOB_ENDED


def _check_target(spec: MirrorSpec) -> bool:
    """Host-side checks of the target; returns True if the target exists now."""
    if spec.is_remote:
        return False
    target = Path(spec.target)
    exists = target.exists()
    if spec.mode == "absolute-paths" and exists:
        raise BadInput(f"target {target} already exists (use mode='existing', HMP -n, to reuse it)")
    if spec.mode == "existing" and not exists:
        raise BadInput(f"target {target} does not exist (mode='existing' reuses an image)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput(f"target directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) and not exists:
        raise BadInput(f"target directory {parent} is not writable")
    if exists and not os.access(target, os.W_OK):
        raise BadInput(f"target {target} is not writable")
    return exists


def check_mirror(backend: Backend, spec: MirrorSpec) -> bool:
    """The checks :func:`mirror` makes before sending anything; True if the target exists.

    :raise BadInput: unknown drive (a ``-drive`` name or a disk's root node name), a job
        already on it, or a target that does not fit.
    """
    info = backend.block_info()
    drives = {d.device for d in info if not d.device.startswith("/")} | \
        {d.node_name for d in info if d.node_name and not d.node_name.startswith("#")}
    if spec.device not in drives:       # a drive's name, or a -blockdev disk's root node
        known = ", ".join(sorted(x for x in drives if x)) or "none"
        raise BadInput(f"unknown drive {spec.device!r} (drives: {known})")
    job_id = spec.job_id or spec.device
    if any(j.id == job_id for j in backend.block_jobs()):
        raise BadInput(f"a block job {job_id!r} is already running")
    return _check_target(spec)


def check_copy_mode(spec: MirrorSpec, caps: Capabilities | None) -> None:
    """A copy mode the build lacks is one line before anything is sent."""
    if caps is not None and caps.copy_modes and not caps.has_copy_mode(spec.copy_mode):
        raise BadInput(f"QEMU {caps.version} has no copy_mode={spec.copy_mode!r} "
                       f"(it has {', '.join(caps.copy_modes)}; write-blocking came in 3.0)")


def mirror(backend: Backend, spec: MirrorSpec, caps: Capabilities | None = None) -> Job:
    """Start a drive-mirror and return its :class:`Job`.

    Checked before anything is sent: the drive exists, the target fits the mode
    (absent for ``absolute-paths``, present for ``existing``), its directory
    is writable, no job already runs on the drive.  If QEMU refuses the job
    after creating the target file, the file is removed.

    :raise BadInput: a check failed; nothing was created or changed.
    :raise BackendError: QEMU refused the command.
    """
    check_copy_mode(spec, caps)
    existed = check_mirror(backend, spec)
    since = len(backend.events)
    try:
        job_id = backend.start_mirror(spec)
    except BackendError:
        if not existed and not spec.is_remote and Path(spec.target).exists():
            Path(spec.target).unlink()
        raise
    return Job(backend, job_id, spec, since, caps)


def commit(backend: Backend, device: str, *, top: str | None = None, base: str | None = None,
           speed: int = 0, job_id: str | None = None) -> Job:
    """Start QMP ``block-commit`` on *device*; returns its :class:`Job`.

    Committing the active layer (no *top*) behaves like a mirror: the job
    becomes ready and :meth:`Job.complete` pivots the drive onto *base*.
    """
    check_speed(speed)
    drives = {d.device for d in backend.block_info()}
    if device not in drives:
        raise BadInput(f"unknown drive {device!r} (drives: {', '.join(sorted(drives)) or 'none'})")
    since = len(backend.events)
    jid = backend.start_commit(device, top=top, base=base, speed=speed, job_id=job_id)
    return Job(backend, jid, None, since)


def backup(backend: Backend, device: str, target: str | Path, *, job_id: str = "backup0",
           speed: int = 0) -> Job:
    """Start QMP ``blockdev-backup sync=full`` of *device* into the existing raw file
    *target*; returns its :class:`Job` (it ends by itself: wait with :meth:`Job.wait_done`,
    then ``backend.drop_backup_target(job.id)``)."""
    drives = {d.device for d in backend.block_info()}
    if device not in drives:
        raise BadInput(f"unknown drive {device!r} (drives: {', '.join(sorted(drives)) or 'none'})")
    if not Path(target).is_file():
        raise BadInput(f"backup target {target} does not exist (create it at the disk's size)")
    check_speed(speed)
    since = len(backend.events)
    return Job(backend, backend.start_backup(device, str(target), job_id=job_id, speed=speed),
               None, since)


class Job:
    """A running (or finished) block job, as QEMU knows it by *job_id*."""

    def __init__(self, backend: Backend, job_id: str, spec: MirrorSpec | None = None,
                 since: int = 0, caps: Capabilities | None = None) -> None:
        self.backend = backend
        self.id = job_id
        self.spec = spec
        self.since = since
        self.caps = caps
        #: the copy mode now (a change() moves it); None when kvmlab did not start the job
        self.copy_mode: str | None = spec.copy_mode if spec else None
        #: monotonic time of the switch to write-blocking made by a wait's policy
        self.switched_at: float | None = None
        #: the wait's latest convergence outlook (see :mod:`kvmlab.live.predictor`); None
        #: again after a change of speed or copy mode, until fresh samples say something
        self.outlook: Outlook | None = None
        #: how many times the job's conditions (speed, copy mode) were changed here
        self.conditions_changed = 0

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.spec.sync if self.spec else ''}>"

    def info(self) -> JobInfo | None:
        """The job's current ``query-block-jobs`` entry, or None once it has gone."""
        return next((j for j in self.backend.block_jobs() if j.id == self.id), None)

    def _event(self, names: str | tuple[str, ...]) -> Record | None:
        return self.backend.events.find(names, {"device": self.id}, since=self.since)

    @property
    def ended(self) -> Record | None:
        return self._event(END_EVENTS)

    @property
    def active(self) -> bool:
        """The job copies in write-blocking mode now (every guest write waits for the
        target), so its backlog, not its offset, says how it fares (the predictor's
        ``active``)."""
        return self.copy_mode == "write-blocking"

    @property
    def is_ready(self) -> bool:
        """Ready per the READY event (or ``ready`` in query-block-jobs) and not ended."""
        if self.ended is not None:
            return False
        if self._event(marks.BLOCK_JOB_READY) is not None:
            return True
        info = self.info()
        return bool(info and info.ready)

    def _abort(self) -> str | None:
        end = self.ended
        if end is None:
            return None
        err = end.data.get("error")
        return f"job ended ({end.name}{': ' + err if err else ''})"

    def wait_ready(self, timeout: float = 300, *, stall_timeout: float | None = None,
                   give_up_when: str | None = None, switch_when: str | None = None,
                   poll: float = 0.25, mark: Callable[..., Any] | None = None,
                   predictor: Predictor | None = None) -> Record:
        """Wait for BLOCK_JOB_READY.

        With any of the policies below the job is sampled every *poll* s and fed to a
        convergence :class:`~kvmlab.live.predictor.Predictor` (its latest answer in
        :attr:`outlook`):

        :param stall_timeout: give up after this many seconds without progress (the
            offset not advancing), not after a fixed total time.
        :param give_up_when: ``"diverging"``: give up as soon as the predictor says the
            job will not converge at current rates.
        :param switch_when: ``"diverging"``: switch the job to ``write-blocking`` (QEMU
            8.2+, :meth:`change`) when the predictor says so, once, and keep waiting.
        :param mark: called as ``mark(name, **data)`` when a policy acts (a recorder's
            :meth:`~kvmlab.live.record.Recorder.mark`).
        :raise JobError: the job ended first (error or cancel).
        :raise JobDiverging: *give_up_when* fired; the message has the rates.
        :raise JobStalled: *stall_timeout* fired.
        :raise WaitTimeout: not ready in *timeout* seconds.
        """
        for name, value in (("give_up_when", give_up_when), ("switch_when", switch_when)):
            if value not in (None, "diverging"):
                raise BadInput(f"{name}={value!r}: the only policy is 'diverging'")
        if stall_timeout is not None and stall_timeout <= 0:
            raise BadInput(f"stall_timeout={stall_timeout!r} must be a positive number of s")
        if switch_when is not None:
            self._check_change("write-blocking")
        if stall_timeout is None and give_up_when is None and switch_when is None:
            return self._wait_ready_event(timeout)
        pred = predictor or Predictor()
        seen_changes = self.conditions_changed
        t0 = time.monotonic()
        deadline = t0 + timeout
        moved_at, last_offset = t0, None
        while True:
            try:
                return self._wait_ready_event(max(0.0, min(poll, deadline - time.monotonic())))
            except JobError as err:
                if not isinstance(err, WaitTimeout) or time.monotonic() >= deadline:
                    raise
            info = self.info()
            now = time.monotonic()
            if info is None:
                continue                      # gone: the next event wait says how it ended
            if self.conditions_changed != seen_changes:
                # a new speed or copy mode (this wait's switch, or another thread's
                # set_speed): the rates before it say nothing after it, and no stale
                # "diverging" is shown while fresh evidence comes in
                seen_changes = self.conditions_changed
                pred.reset()
            if last_offset is None or info.offset - last_offset >= pred.progress:
                moved_at, last_offset = now, info.offset
            self.outlook = out = pred.add(now - t0, info.offset, info.len, ready=info.ready,
                                          paused=info.paused, status=info.status,
                                          speed=info.speed,
                                          active=self.active)
            if stall_timeout is not None and now - moved_at >= stall_timeout:
                raise JobStalled(f"{self.id}: no progress for {now - moved_at:.0f} s "
                                 f"({info.offset / 2**20:.1f} of {info.len / 2**20:.1f} MiB "
                                 "copied); gave up (stall_timeout)")
            if out.state != "diverging":
                continue
            if switch_when and self.switched_at is None and not self.active:
                self.change(copy_mode="write-blocking")      # resets pred (next sample)
                self.switched_at = now
                if mark is not None:
                    mark(marks.COPY_MODE, job=self.id, copy_mode="write-blocking",
                         reason="diverging", **_rates(out))
                continue
            if give_up_when:
                if mark is not None:
                    mark(marks.DIVERGING, job=self.id, **_rates(out))
                raise JobDiverging(f"{self.id}: {out.text()}; gave up (give_up_when="
                                   "'diverging')", out)

    def _wait_ready_event(self, timeout: float) -> Record:
        try:
            return self.backend.events.wait(marks.BLOCK_JOB_READY, {"device": self.id},
                                            since=self.since, timeout=timeout, abort=self._abort)
        except WaitTimeout as err:
            why = self._abort()
            if why:
                raise JobError(f"{self.id}: {why} before ready") from err
            raise

    def wait_done(self, timeout: float = 300) -> JobOutcome:
        """Wait for the job to end (COMPLETED or CANCELLED) and return how it ended."""
        rec = self.backend.events.wait(END_EVENTS, {"device": self.id}, since=self.since,
                                       timeout=timeout)
        d = rec.data
        return JobOutcome(self.id, rec.name, int(d.get("len", 0)), int(d.get("offset", 0)),
                          d.get("error"))

    def wait_status(self, status: str, timeout: float = 60) -> Record:
        """Wait for JOB_STATUS_CHANGE to *status* (``paused``, ``running``, ``ready``...)."""
        return self.backend.events.wait("JOB_STATUS_CHANGE", {"id": self.id, "status": status},
                                        since=self.since, timeout=timeout)

    def cancel(self, force: bool = False) -> None:
        """``block-job-cancel``: after ready, a point-in-time copy as of now (seed's way)."""
        self._require_running("cancel")
        self.backend.job_cancel(self.id, force)

    def complete(self) -> None:
        """``block-job-complete``: pivot the drive to the target.  Only once ready."""
        self._require_running("complete")
        if not self.is_ready:
            raise StateError(f"{self.id}: complete needs the job to be ready first (wait_ready)")
        self.backend.job_complete(self.id)

    def pause(self) -> None:
        self._require_running("pause")
        self.backend.job_pause(self.id)

    def resume(self) -> None:
        self._require_running("resume")
        self.backend.job_resume(self.id)

    def set_speed(self, speed: int) -> None:
        """Change the copy speed limit (bytes/s, 0 = unlimited) while the job runs."""
        check_speed(speed)
        self._require_running("set_speed")
        self.backend.job_set_speed(self.id, speed)
        self._conditions_changed()

    def change(self, *, copy_mode: str) -> None:
        """Switch a running mirror's copy mode (QMP ``block-job-change``, QEMU 8.2+):
        ``write-blocking`` makes every guest write reach the target before it completes,
        so a job the guest outpaces converges, at the cost of the guest's write latency.

        :raise BadInput: a mode QEMU lacks, a QEMU without the command (one line naming
            the version that has it), or a job that is not a mirror.
        :raise StateError: the job has ended.
        """
        self._check_change(copy_mode)
        self.backend.job_change(self.id, copy_mode)
        self.copy_mode = copy_mode
        self._conditions_changed()

    def _conditions_changed(self) -> None:
        """The speed or copy mode changed: a wait's predictor starts afresh, and the last
        outlook (made under the old conditions) is no longer shown."""
        self.conditions_changed += 1
        self.outlook = None

    def _check_change(self, copy_mode: str) -> None:
        if copy_mode not in COPY_MODES:
            raise BadInput(f"copy_mode={copy_mode!r} is not one of {', '.join(COPY_MODES)}")
        caps = self.caps
        if caps is not None and not caps.block_job_change:
            raise BadInput(f"QEMU {caps.version} cannot change a running job's copy mode "
                           "(block-job-change came in QEMU 8.2; start the mirror with "
                           "copy_mode='write-blocking' instead)")
        self._require_running("change")
        info = self.info()
        kind = info.type if info is not None else (self.spec and "mirror")
        if kind != "mirror":
            raise BadInput(f"{self.id}: only a mirror's copy mode can change (this job is "
                           f"{'a ' + kind if kind else 'unknown to QEMU'})")

    def _require_running(self, what: str) -> None:
        end = self.ended
        if end is not None:
            raise StateError(f"{self.id}: cannot {what}, the job has ended ({end.name})")


def _rates(out: Outlook) -> dict[str, Any]:
    """An outlook's numbers for a mark: rates in bytes/s, remaining in bytes."""
    return {"copy_rate": round(out.copy_rate or 0.0), "dirty_rate": round(out.dirty_rate or 0.0),
            "remaining": out.remaining}


_HMP_ERROR = re.compile(r"^(Error|error|Could not|Device '.*' not found|[Uu]nknown command"
                        r"|Parameter '.*' is missing|Try \"help \S+\" for more information)",
                        re.M)


def _check_hmp_mirror(command_line: str) -> None:
    """The API's existing-target guard for the seed's ``drive_mirror`` lines: without
    ``-n`` (reuse) QEMU creates the target and silently overwrites a file already there.

    :raise BadInput: a local target that exists, on a line without ``-n``.
    """
    words = command_line.split()
    if not words or words[0] != "drive_mirror":
        return
    flags = "".join(w[1:] for w in words[1:] if w.startswith("-"))
    args = [w for w in words[1:] if not w.startswith("-")]
    if "n" in flags or len(args) < 2:
        return
    target = args[1]
    if "://" in target or target.startswith("json:"):
        return
    if Path(target).exists():
        raise BadInput(f"drive_mirror target {target} already exists and would be overwritten "
                       "(add -n to reuse it)")


def hmp(backend: Backend, command_line: str, check: bool = True) -> str:
    """Run one HMP command line verbatim (``drive_mirror -f drive0 /x.img``, ``info block-jobs``...).

    HMP reports errors as text (``Error: ...``, ``unknown command: 'x'``, or a complaint
    about the arguments followed by ``Try "help x" for more information``); with *check*
    such text raises BackendError.  A
    ``drive_mirror`` without ``-n`` onto an existing file is refused before it is sent.

    :raise BadInput: an empty line, or a ``drive_mirror`` that would overwrite a file.
    """
    if not command_line.strip():
        raise BadInput("empty HMP command")
    _check_hmp_mirror(command_line)
    out = backend.hmp(command_line)
    if check and _HMP_ERROR.search(out):
        raise BackendError(f"HMP {command_line.split()[0]}: {out.strip().splitlines()[0]}",
                           command=command_line, reply=out)
    return out


def job_for(backend: Backend, job_id: str, since: int | None = None) -> Job:
    """A handle for a job started elsewhere (e.g. by an HMP ``drive_mirror``).

    Without *since*, the handle looks at events from the job's latest
    ``created`` status change, so an earlier job with the same id is ignored.
    """
    if since is None:
        since = 0
        for i, rec in enumerate(backend.events.snapshot()):
            if rec.name == "JOB_STATUS_CHANGE" and rec.data.get("id") == job_id \
                    and rec.data.get("status") == "created":
                since = i
    return Job(backend, job_id, None, since)
