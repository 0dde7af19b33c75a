"""Where kvmlab keeps its files: the data folder, the guest, runs, scratch images, RAM."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data folder: ``$KVMLAB_DATA``, else ``data/`` of the source checkout, else ``./data``."""
    env = os.environ.get("KVMLAB_DATA")
    if env:
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "data"
    return Path.cwd() / "data"


def guest_dir() -> Path:
    """Folder holding the built guest (kernel, initramfs, guest.json)."""
    return data_dir() / "guest"


def runs_dir() -> Path:
    """Folder holding one sub-folder per recorded run: ``$KVMLAB_RUNS``, else ``data/runs``."""
    env = os.environ.get("KVMLAB_RUNS")
    return Path(env).resolve() if env else data_dir() / "runs"


def scratch_dir() -> Path:
    """Folder for disk images of experiments.

    Not /tmp on purpose: images are opened with O_DIRECT (cache=none), which
    tmpfs refuses.  ``$KVMLAB_SCRATCH`` overrides.
    """
    env = os.environ.get("KVMLAB_SCRATCH")
    return Path(env).resolve() if env else data_dir() / "scratch"


def ram_dir() -> Path:
    """Where kvmlab makes its owned dirs in RAM (the benchmarks' images, E6's moved source),
    which the reaper also searches: ``/dev/shm``.  ``$KVMLAB_RAM`` overrides (a test
    session gives each worker its own, so that one worker's reaper never sees another's)."""
    env = os.environ.get("KVMLAB_RAM")
    return Path(env).resolve() if env else Path("/dev/shm")
