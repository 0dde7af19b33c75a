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
    """The guest's file operations, at a set size and rate.

    Style ``seed`` (the seed's operations), each round: touch ``/wl/fN``, mkdir
    ``/wl/dN``, dd ``dd_kib`` KiB of random data into ``/wl/wN.bin`` (fsync), rmdir
    ``/wl/d(N-1)``, then pause.  Every operation is synced before it is reported.

    Style ``consistency`` (what a copy holds of writes in each state): operation N writes
    ``/c/oN``, :attr:`blocks` blocks of 4 KiB whose content names the operation and the
    block (:func:`block_content`); odd operations are synced (the file's fsync returned),
    even ones only written (the data is in the guest's page cache), then pause.

    :ivar dd_kib: size of each dd write (KiB); 0 for no data writes.
    :ivar rate_kib_s: target average write rate (KiB/s) -> the pause between rounds.
    :ivar rounds: stop after this many rounds (0 = no limit).
    :ivar duration_s: stop after this many seconds (0 = no limit).
    :ivar max_files: keep at most this many data files, deleting the oldest (0 = keep all).
    :ivar then_rate_kib_s: > 0: after :attr:`change_after_s` seconds of writing, the
        average rate changes to this (same write size, another pause); the guest says
        ``rate_change`` on its console when it does.
    :ivar change_after_s: seconds from the workload's start to that change.
    :ivar style: ``seed`` or ``consistency`` (see above).
    :ivar blocks: 4 KiB blocks per file in the ``consistency`` style.
    :ivar poweroff: when the workload ends (:attr:`rounds`, :attr:`duration_s`), the guest
        syncs, unmounts and powers off (a guest shutdown), instead of idling.
    :ivar ram_mib_s: beside the file operations, the guest rewrites this many MiB/s of its
        RAM (random data, in place, over a set of :attr:`ram_set_mib` MiB; no disk I/O): a
        buffer pool's dirtying, what a live migration's RAM stream has to keep up with.
        0: none.
    :ivar ram_set_mib: the RAM set those writes cycle over.
    """

    dd_kib: int = 1024
    rate_kib_s: float = 2048
    rounds: int = 0
    duration_s: int = 0
    max_files: int = 0
    then_rate_kib_s: float = 0.0
    change_after_s: int = 0
    style: str = "seed"
    blocks: int = 4
    poweroff: bool = False
    ram_mib_s: float = 0.0
    ram_set_mib: int = 32

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise BadInput(f"workload style={self.style!r} is not one of {', '.join(STYLES)}")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) \
                or not 1 <= self.blocks <= 256:
            raise BadInput(f"workload blocks={self.blocks!r} must be an integer from 1 to 256")
        for name in ("dd_kib", "rounds", "duration_s", "max_files", "change_after_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInput(f"workload {name}={v!r} must be a non-negative integer")
        if not self.rate_kib_s or self.rate_kib_s <= 0:
            raise BadInput(f"workload rate_kib_s={self.rate_kib_s!r} must be positive")
        if not math.isfinite(self.then_rate_kib_s) or self.then_rate_kib_s < 0:
            raise BadInput(f"workload then_rate_kib_s={self.then_rate_kib_s!r} must be a "
                           "finite, non-negative rate (KiB/s)")
        if not math.isfinite(self.ram_mib_s) or not 0 <= self.ram_mib_s <= 256:
            raise BadInput(f"workload ram_mib_s={self.ram_mib_s!r} must be 0 to 256 MiB/s")
        if isinstance(self.ram_set_mib, bool) or not isinstance(self.ram_set_mib, int) \
                or not 1 <= self.ram_set_mib <= 128:
            raise BadInput(f"workload ram_set_mib={self.ram_set_mib!r} must be an integer "
                           "from 1 to 128")
        if self.poweroff and not (self.rounds or self.duration_s):
            raise BadInput("workload poweroff=True needs rounds or duration_s (when to power off)")
        if (self.then_rate_kib_s > 0) != (self.change_after_s > 0):
            raise BadInput(f"workload then_rate_kib_s={self.then_rate_kib_s!r} and "
                           f"change_after_s={self.change_after_s!r} go together: both > 0 "
                           "for a rate change, both 0 for none")

    @property
    def pause_ms(self) -> int:
        return self._pause(self.rate_kib_s)

    @property
    def write_kib(self) -> int:
        """KiB written per round (or per operation in the ``consistency`` style)."""
        return self.blocks * BLOCK // 1024 if self.style == "consistency" else self.dd_kib

    def _pause(self, rate_kib_s: float) -> int:
        return int(round(self.write_kib / rate_kib_s * 1000)) if self.write_kib else 200

    def kernel_args(self) -> list[str]:
        args = [f"kvmlab.dd_kib={self.dd_kib}", f"kvmlab.pause_ms={self.pause_ms}",
                f"kvmlab.rounds={self.rounds}", f"kvmlab.duration_s={self.duration_s}",
                f"kvmlab.max_files={self.max_files}"]
        if self.style != "seed":
            args += [f"kvmlab.style={self.style}", f"kvmlab.blocks={self.blocks}"]
        if self.poweroff:
            args.append("kvmlab.poweroff=1")
        if self.ram_mib_s:
            # 4 ticks a second, each rewriting a quarter of the rate (KiB, in 64 KiB blocks)
            tick = max(64, round(self.ram_mib_s * 1024 / 4 / 64) * 64)
            args += [f"kvmlab.ram_tick_kib={tick}",
                     f"kvmlab.ram_set_mib={self.ram_set_mib}"]
        if self.change_after_s:
            args += [f"kvmlab.then_pause_ms={self._pause(self.then_rate_kib_s)}",
                     f"kvmlab.change_after_s={self.change_after_s}"]
        return args


STYLES = ("seed", "consistency")
#: the block size of the ``consistency`` style's files
BLOCK = 4096


def block_content(op: int, block: int) -> bytes:
    """What block *block* of operation *op*'s file holds (``init.sh``'s ``blocks_of``):
    a line naming both, padded with spaces to 4 KiB."""
    return f"kvmlab op {op} block {block}".ljust(BLOCK - 1).encode() + b"\n"


def file_state(data: bytes | None, op: int, blocks: int) -> str:
    """What a copy holds of operation *op*'s file: ``missing`` (no such file), ``empty``
    (the name, no data: the data was never written back), ``intact`` (every block as
    written) or ``torn`` (anything else: some blocks old, zero or absent)."""
    if data is None:
        return "missing"
    if not data:
        return "empty"
    want = b"".join(block_content(op, k) for k in range(blocks))
    return "intact" if data == want else "torn"


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
