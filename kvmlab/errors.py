"""kvmlab's exception tree.

Everything kvmlab raises on purpose derives from :class:`KvmlabError`, so a
notebook or the CLI can catch one type and print a one-line message.  Wrapping
errors keep their cause (``raise ... from err``); ``BaseException`` subclasses
such as ``KeyboardInterrupt`` are never wrapped.
"""

from __future__ import annotations

from typing import Any


class KvmlabError(Exception):
    """Root of kvmlab's errors.  ``str(err)`` is one line meant for a person."""


class BadInput(KvmlabError, ValueError):
    """A parameter was rejected before anything was created or changed."""


class GuestNotBuilt(KvmlabError):
    """The guest kernel/initramfs is missing: run ``kvmlab guest build``."""


class GuestChanged(GuestNotBuilt):
    """The guest's kernel or initramfs differs from what ``kvmlab guest build`` made."""


class GuestFailed(KvmlabError):
    """The guest said it failed (a ``KVMLAB error=...`` console line), or never booted."""


class GuestBuildError(KvmlabError):
    """Building the guest failed (download, unpack or packing)."""


class LaunchError(KvmlabError):
    """QEMU did not start or did not connect its QMP monitor.

    :ivar exitcode: QEMU's exit code, if it exited.
    :ivar command: the command line that was run.
    :ivar output: what QEMU printed on stderr.
    """

    def __init__(self, message: str, *, exitcode: int | None = None,
                 command: list[str] | None = None, output: str = "") -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.command = command or []
        self.output = output

    def __str__(self) -> str:
        msg = super().__str__()
        tail = self.output.strip().splitlines()[-1:] if self.output else []
        return f"{msg}: {tail[0]}" if tail else msg


class StateError(KvmlabError):
    """A call was made in a state where it makes no sense (e.g. machine not running)."""


class BackendError(KvmlabError):
    """The backend (QMP, libvirt) refused a command.

    :ivar command: what was sent.
    :ivar reply: what came back (the error description), if anything.
    """

    def __init__(self, message: str, *, command: Any = None, reply: Any = None) -> None:
        super().__init__(message)
        self.command = command
        self.reply = reply


class ConnectionLost(BackendError):
    """The VM's monitor went away while kvmlab waited on it: QEMU exited (the message says
    how, e.g. ``QEMU exited: killed by signal 9``) or the connection dropped."""


class JobError(KvmlabError):
    """A block job ended in error, or did not reach the awaited state in time."""


class WaitTimeout(JobError):
    """An awaited event did not arrive in time."""


class JobDiverging(WaitTimeout):
    """A wait gave up: the job copies, but the guest dirties as fast (see
    :mod:`kvmlab.analysis.converge`); the message has the rates.  :attr:`outlook` has them too."""

    def __init__(self, message: str, outlook: Any = None) -> None:
        super().__init__(message)
        self.outlook = outlook


class JobStalled(WaitTimeout):
    """A wait gave up: the job made no progress for its ``stall_timeout``."""


class ToolError(KvmlabError):
    """A host tool (qemu-img, mkfs.ext4, debugfs) failed.

    :ivar command: the argument list that was run.
    :ivar output: its stderr.
    """

    def __init__(self, message: str, *, command: list[str] | None = None, output: str = "") -> None:
        super().__init__(message)
        self.command = command or []
        self.output = output


__all__ = [
    "KvmlabError", "BadInput", "GuestNotBuilt", "GuestBuildError", "LaunchError",
    "StateError", "BackendError", "JobError", "WaitTimeout", "ToolError",
]


class Untrusted(KvmlabError):
    """A file or folder kvmlab would act on is not one it made: another user's, a symlink,
    or open to others (see :mod:`kvmlab.trust`)."""


class NoSpace(KvmlabError):
    """The disk under a path kvmlab writes to is full."""
