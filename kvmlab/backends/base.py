"""The small interface every backend implements, and the optional abilities some have.

:class:`Backend` is what both backends (:class:`~kvmlab.backends.qmp.QMPBackend`,
:class:`~kvmlab.backends.libvirt.LibvirtBackend`) offer.  An ability only some backends
have is a runtime-checkable protocol of its own (as bluesky declares device abilities):
callers ask ``isinstance(backend, InLoopSampling)``, never ``getattr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from kvmlab.events import RecordLog
from kvmlab.model import DriveInfo, JobInfo, MirrorSpec


@runtime_checkable
class Backend(Protocol):
    """What jobs, the recorder and experiments need from a VM connection.

    ``events`` receives every QMP event (name and data as QEMU sends them),
    whichever backend carries them, so waits and recordings look the same.
    """

    name: str
    events: RecordLog

    def block_jobs(self) -> list[JobInfo]: ...
    def block_info(self) -> list[DriveInfo]: ...
    def start_mirror(self, spec: MirrorSpec) -> str: ...
    def start_commit(self, device: str, *, top: str | None = None, base: str | None = None,
                     speed: int = 0, job_id: str | None = None) -> str: ...
    def job_cancel(self, job_id: str, force: bool = False) -> None: ...
    def job_complete(self, job_id: str) -> None: ...
    def job_pause(self, job_id: str) -> None: ...
    def job_resume(self, job_id: str) -> None: ...
    def job_set_speed(self, job_id: str, speed: int) -> None: ...
    def job_change(self, job_id: str, copy_mode: str) -> None: ...
    def stop(self) -> None: ...
    def cont(self) -> None: ...
    def run_state(self) -> str: ...
    def hmp(self, command_line: str) -> str: ...
    def versions(self) -> dict[str, str]: ...
    def close(self) -> None: ...


#: ``on_jobs(monotonic, wall, jobs, late_ticks)``: one sample of every block job
JobsCallback = Callable[[float, float, list[JobInfo], int], None]


@runtime_checkable
class InLoopSampling(Protocol):
    """A backend that samples ``query-block-jobs`` inside its own event loop, with no
    thread hand-off per sample (the QMP backend); others are polled by the recorder."""

    def start_sampler(self, interval: float, on_jobs: JobsCallback,
                      on_error: Callable[[str], None]) -> Callable[[], None]:
        """Start sampling every *interval* s; return the function that stops it (no
        *on_jobs* call follows its return)."""
        ...
