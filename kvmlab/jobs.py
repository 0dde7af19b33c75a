"""Block-job handles over any backend: mirror, wait for ready, cancel, complete, pause...

Waits are driven by QMP events (BLOCK_JOB_READY, BLOCK_JOB_COMPLETED,
BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR, JOB_STATUS_CHANGE) that the backend
puts in its event log; completion is gated on the job's *ready* state, never
on offset == len.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import marks
from .backends.base import Backend
from .errors import BackendError, BadInput, JobError, StateError, WaitTimeout
from .events import Record
from .model import JobInfo, JobOutcome, MirrorSpec, check_speed

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

    :raise BadInput: unknown drive, a job already on it, or a target that does not fit.
    """
    drives = {d.device for d in backend.block_info()}
    if spec.device not in drives:
        known = ", ".join(sorted(x for x in drives if x)) or "none"
        raise BadInput(f"unknown drive {spec.device!r} (drives: {known})")
    job_id = spec.job_id or spec.device
    if any(j.id == job_id for j in backend.block_jobs()):
        raise BadInput(f"a block job {job_id!r} is already running")
    return _check_target(spec)


def mirror(backend: Backend, spec: MirrorSpec) -> Job:
    """Start a drive-mirror and return its :class:`Job`.

    Checked before anything is sent: the drive exists, the target fits the mode
    (absent for ``absolute-paths``, present for ``existing``), its directory
    is writable, no job already runs on the drive.  If QEMU refuses the job
    after creating the target file, the file is removed.

    :raise BadInput: a check failed; nothing was created or changed.
    :raise BackendError: QEMU refused the command.
    """
    existed = check_mirror(backend, spec)
    since = len(backend.events)
    try:
        job_id = backend.start_mirror(spec)
    except BackendError:
        if not existed and not spec.is_remote and Path(spec.target).exists():
            Path(spec.target).unlink()
        raise
    return Job(backend, job_id, spec, since)


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


class Job:
    """A running (or finished) block job, as QEMU knows it by *job_id*."""

    def __init__(self, backend: Backend, job_id: str, spec: MirrorSpec | None = None,
                 since: int = 0) -> None:
        self.backend = backend
        self.id = job_id
        self.spec = spec
        self.since = since

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

    def wait_ready(self, timeout: float = 300) -> Record:
        """Wait for BLOCK_JOB_READY.

        :raise JobError: the job ended first (error or cancel).
        :raise WaitTimeout: not ready in *timeout* seconds.
        """
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

    def _require_running(self, what: str) -> None:
        end = self.ended
        if end is not None:
            raise StateError(f"{self.id}: cannot {what}, the job has ended ({end.name})")


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
