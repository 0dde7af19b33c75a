"""How a run is run and where it is recorded: the plumbing every experiment shares.

Every experiment takes its own parameters (image size, speed, fault...) as keywords and
one :class:`RunOptions` for the rest, which :class:`~kvmlab.experiments.common.LabRun`
applies: where the run folder goes, how often jobs are sampled, which backend and
accelerator run the VMs, the drives' cache mode, whether the images are kept, and the
I/O pattern a busy guest makes (``workload``: every experiment whose guest works takes it).  Notebooks
build it from their parameters with :meth:`RunOptions.from_params`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmlab.errors import BadInput
from kvmlab.guest import fio
from kvmlab.model import ACCELS, CACHE_MODES
from kvmlab.qemu import builds
from kvmlab.qemu.builds import SYSTEM
from kvmlab.qemu.trace import parse_spec

#: the shortest sample interval: one query-block-jobs round trip takes about 1 ms under
#: load, and faster sampling only records the sampler itself
MIN_SAMPLE_INTERVAL = 0.005
#: the longest: a job that lives less would have no sample at all
MAX_SAMPLE_INTERVAL = 60.0

#: the backends a lab VM can run on: kvmlab launches QEMU, or libvirtd does
BACKENDS = ("qmp", "libvirt")


@dataclass(frozen=True)
class RunOptions:
    """The options of one experiment run (validated on creation, so nothing starts on a
    bad value).

    :param runs_dir: parent folder of the new run folder (default ``data/runs``).
    :param run_path: the run folder itself (``kvmlab run`` sets it); wins over *runs_dir*.
    :param sample_interval: seconds between ``query-block-jobs`` samples.
    :param keep_images: keep the run's scratch images (their folder goes into run.json).
    :param backend: ``qmp`` (kvmlab launches QEMU) or ``libvirt`` (a transient domain).
    :param libvirt_uri: the libvirt connection for ``backend="libvirt"``.
    :param accel: ``auto``, ``kvm`` or ``tcg``.
    :param cache: the lab VMs' drive cache mode (the seed's ``none``).
    :param qemu: the QEMU build everything runs with: ``system``, an installed build
        (``10.0``, see ``kvmlab qemu list``) or the path of a ``qemu-system-x86_64``.
    :param trace: QEMU trace events recorded into ``trace.parquet`` (:mod:`kvmlab.qemu.trace`):
        ``default`` (the mirror's and the job's), ``off``, or names/patterns separated by
        commas (checked against the build's ``-trace help``).
    :param workload: what a busy guest does: ``files`` (its file operations alone), or
        fio beside them: a profile (:data:`kvmlab.guest.fio.PROFILES`, ``name`` or
        ``name:KiB/s``) or a job file (``*.fio``).  fio's per-second results become the
        run's ``guest_io.parquet``.
    """

    runs_dir: Path | None = None
    run_path: Path | None = None
    sample_interval: float = 0.1
    keep_images: bool = False
    backend: str = "qmp"
    libvirt_uri: str = "qemu:///system"
    accel: str = "auto"
    cache: str = "none"
    qemu: str = SYSTEM
    trace: str = "default"
    workload: str = fio.FILES

    def __post_init__(self) -> None:
        for name in ("runs_dir", "run_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.backend not in BACKENDS:
            raise BadInput(f"backend={self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.accel not in ACCELS:
            raise BadInput(f"accel={self.accel!r} is not one of {', '.join(ACCELS)}")
        if self.cache not in CACHE_MODES:
            raise BadInput(f"cache={self.cache!r} is not one of {', '.join(CACHE_MODES)}")
        object.__setattr__(self, "qemu", builds.check_name(self.qemu))
        if isinstance(self.trace, bool) or self.trace is None:
            object.__setattr__(self, "trace", "default" if self.trace else "off")
        if not isinstance(self.trace, str):
            raise BadInput(f"trace={self.trace!r} must be on, off or event names separated "
                           "by commas")
        parse_spec(self.trace)
        if isinstance(self.workload, Path):
            object.__setattr__(self, "workload", str(self.workload))
        if not isinstance(self.workload, str):
            raise BadInput(f"workload={self.workload!r} must be 'files', a fio profile or a "
                           ".fio job file")
        if fio.parse(self.workload) is not None and self.backend != "qmp":
            raise BadInput("fio workloads run on the qmp backend (the guest's tools disk is "
                           "an option of the embedded lab)")
        if isinstance(self.sample_interval, bool) or not (
                isinstance(self.sample_interval, (int, float))
                and MIN_SAMPLE_INTERVAL <= self.sample_interval <= MAX_SAMPLE_INTERVAL):
            raise BadInput(f"sample_interval={self.sample_interval!r} must be a number of "
                           f"seconds from {MIN_SAMPLE_INTERVAL} to {MAX_SAMPLE_INTERVAL:g}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> RunOptions:
        """The options among *params* (a notebook's globals, a sweep point), others ignored."""
        chosen = {k: params[k] for k in cls.names() if k in params}
        chosen.update(overrides)
        return cls(**chosen)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def recorded(self) -> dict[str, Any]:
        """What run.json keeps of the options (not where the run folder is)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("runs_dir", "run_path")}


DEFAULT_OPTIONS = RunOptions()
