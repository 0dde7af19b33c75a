"""Plain data: what a mirror is asked to do and what QEMU reports back.

Pure values with validation that needs no QEMU; the checks that need the
host or the VM (does the drive exist, is the target directory writable) live
in :mod:`kvmlab.live.jobs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from kvmlab.errors import BadInput

SYNC_MODES = ("full", "top", "none")
MIRROR_MODES = ("absolute-paths", "existing")
ERROR_POLICIES_SOURCE = ("report", "ignore", "enospc", "stop")
ERROR_POLICIES_TARGET = ("report", "ignore", "enospc", "stop")
COPY_MODES = ("background", "write-blocking")
MIN_GRANULARITY = 512
MAX_GRANULARITY = 64 * 1024 * 1024

#: QEMU's cache modes for a drive (the seed used ``none``)
CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")
#: ``auto``: KVM only if a guest really boots under it, else TCG
ACCELS = ("auto", "kvm", "tcg")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInput(f"{name}={value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class MirrorSpec:
    """A drive-mirror request, named as in QMP's ``drive-mirror`` (with underscores).

    :ivar device: the drive id (``drive0``), as the seed's HMP commands name it.
    :ivar target: target image path (or a ``nfs://`` / ``nbd:`` URL for remote targets).
    :ivar format: target format; None lets QEMU use the source's.
    :ivar sync: ``full`` (HMP ``-f``: the whole chain), ``top`` (only the top layer), ``none``.
    :ivar mode: ``absolute-paths`` (QEMU creates the target) or ``existing`` (HMP ``-n``).
    :ivar speed: bytes per second, 0 for unlimited.
    :ivar unmap: unmap target areas the source reads as zero (QEMU's default: yes).
    """

    device: str
    target: str
    format: str | None = None
    sync: str = "full"
    mode: str = "absolute-paths"
    speed: int = 0
    granularity: int | None = None
    buf_size: int | None = None
    on_source_error: str = "report"
    on_target_error: str = "report"
    copy_mode: str = "background"
    job_id: str | None = None
    unmap: bool | None = None

    def __post_init__(self) -> None:
        if not self.device or not isinstance(self.device, str):
            raise BadInput("device must be a non-empty drive id")
        if not self.target:
            raise BadInput("target must be a non-empty path")
        _one_of("sync", self.sync, SYNC_MODES)
        _one_of("mode", self.mode, MIRROR_MODES)
        _one_of("on_source_error", self.on_source_error, ERROR_POLICIES_SOURCE)
        _one_of("on_target_error", self.on_target_error, ERROR_POLICIES_TARGET)
        _one_of("copy_mode", self.copy_mode, COPY_MODES)
        check_speed(self.speed)
        if self.granularity is not None:
            check_granularity(self.granularity)
        if self.buf_size is not None and (not isinstance(self.buf_size, int) or self.buf_size <= 0
                                          or self.buf_size > QMP_INT_MAX):
            raise BadInput(f"buf_size={self.buf_size} must be a positive number of bytes "
                           f"up to {QMP_INT_MAX}")

    @property
    def is_remote(self) -> bool:
        """True when the target is a URL (nfs://, nbd:...) rather than a host path."""
        return "://" in self.target or self.target.startswith(("nbd:", "json:"))

    def qmp_arguments(self) -> dict[str, Any]:
        """Arguments for QMP ``drive-mirror``."""
        args: dict[str, Any] = {
            "device": self.device, "target": self.target, "sync": self.sync,
            "mode": self.mode, "speed": self.speed,
            "on-source-error": self.on_source_error, "on-target-error": self.on_target_error,
            "copy-mode": self.copy_mode,
        }
        if self.job_id:
            args["job-id"] = self.job_id
        if self.format:
            args["format"] = self.format
        if self.granularity is not None:
            args["granularity"] = self.granularity
        if self.buf_size is not None:
            args["buf-size"] = self.buf_size
        if self.unmap is not None:
            args["unmap"] = self.unmap
        return args

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: QMP's ``int`` is a signed 64-bit integer: larger values are refused by QEMU itself
QMP_INT_MAX = 2**63 - 1


def check_speed(speed: Any, name: str = "speed", zero: str = "unlimited") -> int:
    """A rate limit in bytes/s: a non-negative integer (0 = *zero*)."""
    if isinstance(speed, bool) or not isinstance(speed, int) or speed < 0:
        raise BadInput(f"{name}={speed!r} must be a non-negative integer (bytes/s, 0 = {zero})")
    if speed > QMP_INT_MAX:
        raise BadInput(f"{name}={speed} is above QEMU's largest integer ({QMP_INT_MAX})")
    return speed


def check_granularity(g: Any) -> int:
    """A mirror's dirty-bitmap granularity: a power of two from 512 B to 64 MiB."""
    if isinstance(g, bool) or not isinstance(g, int) or g < MIN_GRANULARITY \
            or g > MAX_GRANULARITY or g & (g - 1):
        raise BadInput(f"granularity={g!r} must be a power of two from 512 B to 64 MiB")
    return g


@dataclass(frozen=True)
class JobInfo:
    """One entry of ``query-block-jobs``, normalized (remaining = len - offset)."""

    id: str
    type: str
    len: int
    offset: int
    speed: int
    busy: bool
    paused: bool
    ready: bool
    status: str
    io_status: str
    #: QEMU 8.2+: a write-blocking mirror whose writes now reach both sides (None: not said)
    actively_synced: bool | None = None

    @property
    def remaining(self) -> int:
        return self.len - self.offset

    @classmethod
    def from_qmp(cls, d: Mapping[str, Any]) -> JobInfo:
        return cls(id=str(d["device"]), type=str(d.get("type", "")), len=int(d.get("len", 0)),
                   offset=int(d.get("offset", 0)), speed=int(d.get("speed", 0)),
                   busy=bool(d.get("busy", False)), paused=bool(d.get("paused", False)),
                   ready=bool(d.get("ready", False)), status=str(d.get("status", "")),
                   io_status=str(d.get("io-status", "ok")),
                   actively_synced=(bool(d["actively-synced"]) if "actively-synced" in d
                                    else None))

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["remaining"] = self.remaining
        return row


@dataclass(frozen=True)
class DriveInfo:
    """Which image a drive is using now (``query-block``), with its backing chain."""

    device: str
    file: str | None
    format: str | None
    node_name: str | None = None
    backing_chain: tuple[str, ...] = field(default_factory=tuple)
    read_only: bool = False

    @classmethod
    def from_qmp(cls, d: Mapping[str, Any]) -> DriveInfo:
        ins = d.get("inserted") or {}
        chain: list[str] = []
        img = (ins.get("image") or {}).get("backing-image")
        while img:
            chain.append(str(img.get("filename")))
            img = img.get("backing-image")
        return cls(device=str(d.get("device") or d.get("qdev", "")), file=ins.get("file"),
                   format=ins.get("drv"), node_name=ins.get("node-name"),
                   backing_chain=tuple(chain), read_only=bool(ins.get("ro", False)))


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: the final event and its payload."""

    job_id: str
    event: str              # BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED
    len: int
    offset: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
