"""What the guest is told to do (kernel command line), and the manifest it verifies."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmlab.errors import BadInput


@dataclass(frozen=True)
class Workload:
    """The seed's guest file operations, at a set size and rate.

    Each round: touch ``/wl/fN``, mkdir ``/wl/dN``, dd ``dd_kib`` KiB of random
    data into ``/wl/wN.bin`` (fsync), rmdir ``/wl/d(N-1)``, then pause.

    :ivar dd_kib: size of each dd write (KiB); 0 for no data writes.
    :ivar rate_kib_s: target average write rate (KiB/s) -> the pause between rounds.
    :ivar rounds: stop after this many rounds (0 = no limit).
    :ivar duration_s: stop after this many seconds (0 = no limit).
    :ivar max_files: keep at most this many data files, deleting the oldest (0 = keep all).
    :ivar then_rate_kib_s: > 0: after :attr:`change_after_s` seconds of writing, the
        average rate changes to this (same write size, another pause); the guest says
        ``rate_change`` on its console when it does.
    :ivar change_after_s: seconds from the workload's start to that change.
    """

    dd_kib: int = 1024
    rate_kib_s: float = 2048
    rounds: int = 0
    duration_s: int = 0
    max_files: int = 0
    then_rate_kib_s: float = 0.0
    change_after_s: int = 0

    def __post_init__(self) -> None:
        for name in ("dd_kib", "rounds", "duration_s", "max_files", "change_after_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInput(f"workload {name}={v!r} must be a non-negative integer")
        if not self.rate_kib_s or self.rate_kib_s <= 0:
            raise BadInput(f"workload rate_kib_s={self.rate_kib_s!r} must be positive")
        if not math.isfinite(self.then_rate_kib_s) or self.then_rate_kib_s < 0:
            raise BadInput(f"workload then_rate_kib_s={self.then_rate_kib_s!r} must be a "
                           "finite, non-negative rate (KiB/s)")
        if (self.then_rate_kib_s > 0) != (self.change_after_s > 0):
            raise BadInput(f"workload then_rate_kib_s={self.then_rate_kib_s!r} and "
                           f"change_after_s={self.change_after_s!r} go together: both > 0 "
                           "for a rate change, both 0 for none")

    @property
    def pause_ms(self) -> int:
        return self._pause(self.rate_kib_s)

    def _pause(self, rate_kib_s: float) -> int:
        return int(round(self.dd_kib / rate_kib_s * 1000)) if self.dd_kib else 200

    def kernel_args(self) -> list[str]:
        args = [f"kvmlab.dd_kib={self.dd_kib}", f"kvmlab.pause_ms={self.pause_ms}",
                f"kvmlab.rounds={self.rounds}", f"kvmlab.duration_s={self.duration_s}",
                f"kvmlab.max_files={self.max_files}"]
        if self.change_after_s:
            args += [f"kvmlab.then_pause_ms={self._pause(self.then_rate_kib_s)}",
                     f"kvmlab.change_after_s={self.change_after_s}"]
        return args


_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")


@dataclass
class Manifest:
    """Final state the copy must show: files with checksums, dirs present, paths gone."""

    files: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    #: paths of operations in flight at the cut-off: either state is right
    unknown: set[str] = field(default_factory=set)

    def add_file(self, path: str, sha256: str) -> None:
        self._check(path)
        self.files[path] = sha256
        self.gone.discard(path)

    def apply(self, op: str, path: str, sha256: str | None = None) -> None:
        """Apply one guest operation to the expected final state."""
        self._check(path)
        if op in ("touch", "dd"):
            self.add_file(path, sha256 or "")
        elif op == "mkdir":
            self.dirs.add(path)
            self.gone.discard(path)
        elif op in ("rmdir", "rm"):
            self.dirs.discard(path)
            self.files.pop(path, None)
            self.gone.add(path)
        else:
            raise BadInput(f"unknown guest operation {op!r}")

    def mark_unknown(self, path: str) -> None:
        """An operation on *path* was in flight at the cut-off: expect nothing of it."""
        self._check(path)
        self.files.pop(path, None)
        self.dirs.discard(path)
        self.gone.discard(path)
        self.unknown.add(path)

    @classmethod
    def from_ops(cls, ops: Iterable[Mapping[str, Any]], base: Manifest | None = None,
                 in_flight: Iterable[Mapping[str, Any]] = ()) -> Manifest:
        """Replay confirmed *ops* over *base*; paths of *in_flight* ops become unknown."""
        m = (cls(dict(base.files), set(base.dirs), set(base.gone), set(base.unknown))
             if base else cls())
        for o in ops:
            m.apply(str(o["op"]), str(o["path"]), o.get("sha256"))
        for o in in_flight:
            m.mark_unknown(str(o["path"]))
        return m

    @staticmethod
    def _check(path: str) -> None:
        if not _SAFE_PATH.match(path):
            raise BadInput(f"manifest path {path!r} must be absolute and plain")

    def __len__(self) -> int:
        """Entries the verifier checks (unknown paths are reported, not checked)."""
        return len(self.files) + len(self.dirs) + len(self.gone)

    def text(self) -> str:
        lines = [f"F {p} {s}" for p, s in sorted(self.files.items())]
        lines += [f"D {p}" for p in sorted(self.dirs)]
        lines += [f"G {p}" for p in sorted(self.gone)]
        lines += [f"U {p}" for p in sorted(self.unknown)]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        Path(path).write_text(self.text())
        return Path(path)
