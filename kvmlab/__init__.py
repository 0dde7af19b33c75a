"""kvmlab: QEMU/KVM block-mirror experiments as reproducible lab notebooks.

The public names below are loaded lazily (PEP 562): ``import kvmlab`` and
``import kvmlab.analysis`` load nothing that talks to QEMU.  The package's layers, top to
bottom, are in ``.importlinter`` (checked by ``make lint``); the README's "Architecture"
section shows them.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from kvmlab._version import __version__

if TYPE_CHECKING:
    from kvmlab.errors import (
        BackendError,
        BadInput,
        GuestNotBuilt,
        JobError,
        KvmlabError,
        LaunchError,
        StateError,
        ToolError,
        WaitTimeout,
    )
    from kvmlab.guest.workload import Manifest, Workload
    from kvmlab.live.jobs import Job, hmp, job_for, mirror
    from kvmlab.model import DriveInfo, JobInfo, JobOutcome, MirrorSpec
    from kvmlab.store.runs import RunData, load_run
    from kvmlab.vm.machine import Drive, Machine, resolve_accel

#: public name -> the module that defines it
_WHERE = {
    **dict.fromkeys(("KvmlabError", "BadInput", "BackendError", "GuestNotBuilt", "JobError",
                     "LaunchError", "StateError", "ToolError", "WaitTimeout"), "errors"),
    "Manifest": "guest.workload", "Workload": "guest.workload",
    **dict.fromkeys(("Job", "hmp", "job_for", "mirror"), "live.jobs"),
    **dict.fromkeys(("Drive", "Machine", "resolve_accel"), "vm.machine"),
    **dict.fromkeys(("DriveInfo", "JobInfo", "JobOutcome", "MirrorSpec"), "model"),
    "RunData": "store.runs", "load_run": "store.runs",
}

logging.getLogger("kvmlab").addHandler(logging.NullHandler())

__all__ = [
    "__version__", "load_run", "RunData", "Machine", "Drive", "resolve_accel", "Workload",
    "Manifest", "Job", "mirror", "hmp", "job_for", "MirrorSpec", "JobInfo", "JobOutcome",
    "DriveInfo", "KvmlabError", "BadInput", "BackendError", "GuestNotBuilt", "JobError",
    "LaunchError", "StateError", "ToolError", "WaitTimeout",
]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (``kvmlab.Machine``)."""
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kvmlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
