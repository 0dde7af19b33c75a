"""Target faults made by QEMU itself or by the host: EIO on writes, no space left.

- :func:`blkdebug_target` wraps a raw image in QEMU's ``blkdebug`` driver so its
  first *errors* writes fail with EIO (the mirror opens it with ``mode=existing``);
- :class:`SmallTmpfs` mounts a tmpfs of a few MiB: a target on it runs out of
  space (ENOSPC) mid-copy; :meth:`SmallTmpfs.grow` is the recovery step.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from kvmlab import _proc, marks
from kvmlab.errors import BadInput, StateError, ToolError
from kvmlab.faults.base import Mark, no_mark, private_tmpdir, remove_tree


def blkdebug_target(image: str | Path, *, errors: int = 1, err: int = errno.EIO) -> str:
    """A ``json:`` target that opens the raw *image* through blkdebug: its first *errors*
    writes fail with *err* (EIO), later ones succeed.  Mirror onto it with ``mode=existing``
    and no format (the raw format is in the target).

    Each error is a one-shot blkdebug rule on the ``pwritev`` event (write I/O only),
    so a job that stops or ignores the error can go on once they are used up.
    """
    path = Path(image).resolve()
    if not path.is_file():
        raise BadInput(f"blkdebug image {path} does not exist (create it first)")
    if not 1 <= errors <= 100:
        raise BadInput(f"errors={errors} must be between 1 and 100")
    rules = [{"event": "pwritev", "iotype": "write", "errno": int(err), "once": True}
             for _ in range(errors)]
    spec = {"driver": "raw", "file": {"driver": "blkdebug", "inject-error": rules,
                                      "image": {"driver": "file", "filename": str(path)}}}
    return "json:" + json.dumps(spec, separators=(",", ":"))


class SmallTmpfs:
    """A tmpfs of *size_mib* MiB mounted on a private folder (root only).

    A context manager: on exit it is unmounted and the folder removed.
    """

    def __init__(self, size_mib: int = 8, *, mark: Mark | None = None) -> None:
        if not isinstance(size_mib, int) or not 1 <= size_mib <= 4096:
            raise BadInput(f"tmpfs size {size_mib!r} MiB must be an integer from 1 to 4096")
        if os.geteuid() != 0:
            raise BadInput("mounting a tmpfs needs root")
        self.size_mib = size_mib
        self.mark = mark or no_mark
        self.tmp: Path | None = None
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.tmp = private_tmpdir()
        self.path = self.tmp / "fs"
        self.path.mkdir()
        try:
            _proc.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m,mode=0700",
                       "kvmlab-tmpfs", self.path])
        except ToolError:
            remove_tree(self.tmp)
            raise
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.close()

    def grow(self, size_mib: int) -> None:
        """Remount bigger (the recovery from ENOSPC); marked ``grow_tmpfs``."""
        if self.path is None:
            raise StateError("tmpfs is not mounted")
        _proc.run(["mount", "-o", f"remount,size={size_mib}m", self.path])
        self.mark(marks.GROW_TMPFS, size_mib=size_mib, was_mib=self.size_mib)
        self.size_mib = size_mib

    def close(self) -> None:
        if self.path is not None:
            rc, _, _ = _proc.run_rc(["umount", self.path], timeout=30)
            if rc != 0:
                _proc.run_rc(["umount", "-l", self.path], timeout=30)
            self.path = None
        remove_tree(self.tmp)
        self.tmp = None
