"""Temp dirs kvmlab owns, and reaping those whose owner was killed.

Every process kvmlab starts keeps its sockets, logs and mounts in an *owned* dir: one
with ``owner.pid``.  A killed Python cannot clean up after itself; its QEMU dies with it
(pdeathsig) and the next :func:`owned_tmpdir` (or :func:`reap_stale_tmpdirs`) removes
what was left.  VMs, fault injectors, sweeps and benchmarks all use this module, so none
of them imports the VM launcher for it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from kvmlab import _proc, paths, trust
from kvmlab.errors import Untrusted
from kvmlab.store import runs

log = logging.getLogger(__name__)


def _unmount_below(folder: Path) -> None:
    """Lazily unmount every mount point inside *folder* (deepest first)."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    inside = [m for m in mounts if m.startswith(f"{folder}/")]
    for m in sorted(inside, key=len, reverse=True):
        _proc.run_rc(["umount", "-l", m], timeout=30)


#: a command (JSON argv, never a shell line) the reaper runs before removing a dir: how to
#: stop what its killed owner had started outside its own process tree (a libvirt domain)
ON_REAP = "on-reap.json"
OWNER = "owner.pid"
#: the run folder whose scratch images this dir holds: marked ``killed`` when reaped
RUN_FOLDER = "run-folder"


def _candidates(tmp: Path, ram: Path, scratch: Path) -> list[Path]:
    """kvmlab-* dirs in *tmp* and in *ram*; any dir in the scratch folder *scratch* (only if
    that folder is ours: :mod:`kvmlab.trust`)."""
    found = [d for parent in (tmp, ram) for d in parent.glob("kvmlab-*")]
    if scratch.is_dir():
        if trust.owned_dir(scratch, private=False):
            found += list(scratch.iterdir())
        else:
            trust.mention_once(str(scratch), f"not reaping in {scratch}: it is not ours")
    return found


def _owner(folder: Path) -> int | None:
    """The pid in *folder*'s ``owner.pid`` if the folder and the file are ours (owned by
    our uid, 0700, no symlinks); None for anything else, which is left alone."""
    if not os.path.lexists(folder / OWNER):
        return None                      # no owned dir (kept images, a user's folder)
    if not trust.owned_dir(folder):
        trust.mention_once(str(folder), f"left alone: {folder} is not a private folder "
                           "of ours, so nothing in it is trusted")
        return None
    try:
        return int(trust.read_owned(folder / OWNER))
    except FileNotFoundError:
        return None
    except (Untrusted, OSError, ValueError) as err:
        trust.mention_once(str(folder), f"left alone: {folder}: {err}")
        return None


def reap_stale_tmpdirs(tmp: Path | None = None, ram: Path | None = None,
                       scratch: Path | None = None) -> list[Path]:
    """Remove kvmlab's owned dirs (VMs, faults, the benchmarks' RAM and scratch dirs,
    experiments' scratch images) whose owning process is gone (it was killed).

    A killed Python cannot clean up after itself; its QEMU dies with it (pdeathsig), and
    what it started elsewhere is stopped by the dir's ``on-reap.json``.  The next launch
    removes what was left.  Only private dirs of ours are touched, and only files of ours
    in them are read (see :mod:`kvmlab.trust`): a dir another user made is left alone.
    It searches the temp dir, the RAM dir (:func:`kvmlab.paths.ram_dir`) and kvmlab's
    scratch folder (:func:`kvmlab.paths.scratch_dir`), or the folders given instead (a
    test session reaping another, killed session's folders).  Returns what it removed.
    """
    removed = []
    for d in _candidates(tmp or Path(tempfile.gettempdir()), ram or paths.ram_dir(),
                         scratch or paths.scratch_dir()):
        owner = _owner(d)
        if owner is not None and not _proc.alive(owner):
            _mark_run_killed(d)
            _run_on_reap(d)
            _unmount_below(d)            # a fault's tmpfs left mounted by the killed owner
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _run_on_reap(folder: Path) -> None:
    try:
        argv = json.loads(trust.read_owned(folder / ON_REAP))
    except FileNotFoundError:
        return
    except (Untrusted, OSError, ValueError) as err:
        trust.mention_once(str(folder / ON_REAP), f"not run: {err}")
        return
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        try:
            _proc.run_rc(argv, timeout=60)
        except Exception:  # noqa: BLE001 - reaping is best effort; the dir still goes
            log.warning("reaping %s: %s failed", folder, argv[0], exc_info=True)


def _mark_run_killed(folder: Path) -> None:
    try:
        run = Path(trust.read_owned(folder / RUN_FOLDER).strip())
    except FileNotFoundError:
        return
    except (Untrusted, OSError) as err:
        trust.mention_once(str(folder / RUN_FOLDER), f"run not marked killed: {err}")
        return
    if not trust.owned_dir(run, private=False):
        trust.mention_once(str(run), f"run {run} not marked killed: it is not a folder of ours")
        return
    runs.mark_killed(run)


def own(folder: Path, on_reap: list[str] | None = None, run: Path | None = None) -> None:
    """Mark *folder* as this process's, to be reaped if it dies without removing it;
    *on_reap* is run first then (an argv), and *run* (the run folder it serves) is marked
    ``killed``."""
    if run is not None:
        (folder / RUN_FOLDER).write_text(f"{run}\n")
    if on_reap is not None:
        (folder / ON_REAP).write_text(json.dumps(on_reap) + "\n")
    (folder / OWNER).write_text(f"{os.getpid()}\n")


def disown(folder: Path) -> None:
    """Keep *folder* after this process ends (scratch images the user asked to keep)."""
    for name in (OWNER, ON_REAP, RUN_FOLDER):
        (folder / name).unlink(missing_ok=True)


def owned_tmpdir(prefix: str = "kvmlab-tmp-", parent: Path | None = None,
                 mode: int = 0o700) -> Path:
    """A new temp dir (in the temp dir, or *parent*: the RAM dir, :func:`paths.ram_dir`) with
    ``owner.pid``, so that :func:`reap_stale_tmpdirs` removes it if we are killed; stale
    ones of killed runs are reaped first."""
    reap_stale_tmpdirs()
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))   # O_EXCL, 0700, ours
    if mode != 0o700:
        os.chmod(d, mode)
    own(d)
    return d
