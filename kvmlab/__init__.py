"""kvmlab: QEMU/KVM block-mirror experiments as reproducible lab notebooks.

Data flows one way: backend -> job -> recorder -> analysis -> plots/widgets/reports.
"""

from __future__ import annotations

import logging

from .errors import (
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
from .guest.workload import Manifest, Workload
from .jobs import Job, hmp, job_for, mirror
from .machine import Drive, Machine, resolve_accel
from .model import DriveInfo, JobInfo, JobOutcome, MirrorSpec
from .runs import RunData, load_run

__version__ = "0.1.0"

logging.getLogger("kvmlab").addHandler(logging.NullHandler())

__all__ = [
    "__version__", "load_run", "RunData", "Machine", "Drive", "resolve_accel", "Workload", "Manifest",
    "Job", "mirror", "hmp", "job_for", "MirrorSpec", "JobInfo", "JobOutcome", "DriveInfo",
    "KvmlabError", "BadInput", "BackendError", "GuestNotBuilt", "JobError", "LaunchError",
    "StateError", "ToolError", "WaitTimeout",
]
