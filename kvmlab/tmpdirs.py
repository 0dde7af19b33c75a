"""Temp dirs kvmlab owns, and reaping those whose owner was killed.

Every process kvmlab starts keeps its sockets, logs and mounts in an *owned* dir: one
with ``owner.pid``.  A killed Python cannot clean up after itself; its QEMU dies with it
(pdeathsig) and the next :func:`owned_tmpdir` (or :func:`reap_stale_tmpdirs`) removes
what was left.  VMs, fault injectors, sweeps and benchmarks all use this module, so none
of them imports the VM launcher for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from . import _proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unmount_below(folder: Path) -> None:
    """Lazily unmount every mount point inside *folder* (deepest first)."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    inside = [m for m in mounts if m.startswith(f"{folder}/")]
    for m in sorted(inside, key=len, reverse=True):
        _proc.run_rc(["umount", "-l", m], timeout=30)


#: besides the temp dir, where kvmlab makes owned dirs (the benchmarks' RAM disk)
REAPED_PARENTS = (Path("/dev/shm"),)


def reap_stale_tmpdirs() -> list[Path]:
    """Remove kvmlab's owned temp dirs (VMs, faults, the benchmarks' RAM dirs) whose
    owning process is gone (it was killed with SIGKILL).

    A killed Python cannot clean up after itself; its QEMU dies with it
    (pdeathsig) and the next launch removes what was left.  Returns what it removed.
    """
    removed = []
    for d in [d for parent in (Path(tempfile.gettempdir()), *REAPED_PARENTS)
              for d in parent.glob("kvmlab-*")]:
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            _unmount_below(d)            # a fault's tmpfs left mounted by the killed owner
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def owned_tmpdir(prefix: str = "kvmlab-tmp-", parent: Path | None = None,
                 mode: int = 0o700) -> Path:
    """A new temp dir (in the temp dir, or *parent*: one of :data:`REAPED_PARENTS`) with
    ``owner.pid``, so that :func:`reap_stale_tmpdirs` removes it if we are killed; stale
    ones of killed runs are reaped first."""
    reap_stale_tmpdirs()
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(d, mode)
    (d / "owner.pid").write_text(f"{os.getpid()}\n")
    return d


