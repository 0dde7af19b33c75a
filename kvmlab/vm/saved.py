"""Saved guests: the lab guest's boot done once per VM shape, resumed by every VM of it.

Under TCG a boot of the lab guest costs about 2.3 s of CPU, and every VM pays it.  Its init
can stop before any driver has seen a disk (``kvmlab.snap=1``: it says ``snap`` and waits
for one console line).  QEMU's migration stream of that moment, written to a file, is what
each later VM of the same *shape* resumes from (``-incoming fd:N``, then ``cont``); its own
``kvmlab.*`` parameters and a random seed then come as that console line, and its drivers
find its own disks.  ``benchmarks/run.py`` boot measures both ways.

A shape is what the saved moment depends on: the QEMU build, the built guest, the memory,
the accelerator, the kernel's own parameters, and the devices (``-device``, ``-object``,
``-fw_cfg`` names, extra arguments).  Not the disks' images, formats or cache modes: no
driver has opened a disk when the state is saved, and block backends are not part of it.

The files live in ``data/guest/saved`` (private); one is trusted only if it is a regular
file of ours (owner, mode, no symlink).  A new guest build removes them with the old
guest.  On by default; ``KVMLAB_SAVED_GUESTS=0`` (or ``Machine(saved_boot=False)``) boots
every VM.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from kvmlab import _proc, paths, trust
from kvmlab.errors import Untrusted

#: the console line a saved guest says where it waits (init.sh)
SNAP_RECORD = "snap"
#: the kernel parameter that makes init stop there
SNAP_PARAM = "kvmlab.snap=1"
#: bump when what a saved file holds changes meaning
FORMAT = 1

# a QEMU option value (``,,`` is an escaped comma): file names and socket paths in it
_PATH_OPT = re.compile(r"((?:^|,)(?:file|path|filename)=)(?:[^,]|,,)*")
#: options whose whole value is a block backend (not part of a saved state) or a name
_ANY_VALUE = {"-drive", "-blockdev", "-name", "-kernel", "-initrd"}


def enabled() -> bool:
    """Saved guests are used unless ``KVMLAB_SAVED_GUESTS=0`` (a VM may also say)."""
    return os.environ.get("KVMLAB_SAVED_GUESTS", "1") != "0"


def folder() -> Path:
    return paths.guest_dir() / "saved"


def shape(command: Sequence[str], *, build: str, guest: dict[str, object]) -> str:
    """The key of *command*'s shape: what a state saved from one VM of it holds.

    *command* is the VM's QEMU command line without trace options; *build* names the QEMU
    build (path and version); *guest* is the built guest's ``guest.json``.
    """
    norm: list[str] = []
    skip_next = False
    for i, arg in enumerate(command):
        if skip_next:
            skip_next = False
            continue
        if arg in _ANY_VALUE:
            norm += [arg, "*"]
            skip_next = True
        elif i > 0 and command[i - 1] == "-append":
            norm.append(" ".join(t for t in arg.split() if not t.startswith("kvmlab.")))
        else:
            norm.append(_PATH_OPT.sub(r"\1*", arg))
    blob = json.dumps({"format": FORMAT, "build": build, "guest": guest, "command": norm[1:]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def path_of(key: str) -> Path:
    return folder() / f"{key}.state"


def open_saved(key: str) -> int | None:
    """A read-only fd of the state saved for *key*, or None (none saved, or one that is
    not ours to trust: it is then ignored, and replaced by the next save)."""
    try:
        return trust.open_owned(path_of(key))
    except FileNotFoundError:
        return None
    except Untrusted as err:
        trust.mention_once(str(path_of(key)), f"not resumed from: {err}")
        return None


def new_file(key: str) -> tuple[int, Path]:
    """A fresh private file to save *key*'s state into (``O_EXCL``, beside its final name;
    :func:`publish` moves it there).  Leftovers of a killed saver are removed first."""
    d = trust.private_dir(folder(), "the saved guests' folder")
    for old in d.glob(".*.part"):
        pid = old.name.split(".")[1].split("-")[0]
        if pid.isdigit() and not _proc.alive(int(pid)):
            old.unlink(missing_ok=True)
    part = d / f".{os.getpid()}-{secrets.token_hex(4)}.{key}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    return fd, part


def publish(part: Path, key: str) -> None:
    """Make the saved *part* the state of *key* (synced, then renamed over any older)."""
    fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path_of(key))


def seed_param() -> str:
    """A random seed for a resumed guest's kernel RNG: each copy writes its own data."""
    return f"kvmlab.seed={secrets.token_hex(16)}"
