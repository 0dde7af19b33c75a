"""What a QEMU build can do for a mirror: read from its QMP schema (pure; the probe that
asks a build is :mod:`kvmlab.vm.qemu_probe`).

The probe starts the build's emulator with no machine (``-M none``), asks QMP
``query-version`` and ``query-qmp-schema``, and reads the answers that matter for
mirror studies: the copy modes ``blockdev-mirror`` takes, whether ``block-job-change``
exists (switch a running mirror to write-blocking, QEMU 8.2), whether
``query-block-jobs`` reports ``actively-synced``, the error policies, and the trace
control commands.  Type names in the schema are masked, so everything is found by
following command and member names.  The answer is cached per build (keyed by the
emulator's path, size and mtime) and written into every ``run.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CACHE_VERSION = 1


@dataclass(frozen=True)
class Capabilities:
    """A build's mirror-related capabilities (see the module doc)."""

    version: str
    package: str
    copy_modes: tuple[str, ...]
    block_job_change: bool
    actively_synced: bool
    error_policies: tuple[str, ...]
    mirror_args: tuple[str, ...]
    trace_control: bool
    commands: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Capabilities:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in d.items()}
        return cls(**fields)

    def has_copy_mode(self, mode: str) -> bool:
        return mode in self.copy_modes


class Schema:
    """``query-qmp-schema`` indexed by (masked) type name."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.by_name = {e["name"]: e for e in entries}

    def command(self, name: str) -> dict[str, Any] | None:
        e = self.by_name.get(name)
        return e if e and e.get("meta-type") == "command" else None

    def members(self, type_name: str | None) -> dict[str, str]:
        """member name -> type name of an object type, its variants' members included
        (``BlockJobInfo`` is a union on 8.2+: ``actively-synced`` is in the mirror branch)."""
        e = self.by_name.get(type_name or "")
        if not e or e.get("meta-type") != "object":
            return {}
        found = {m["name"]: m["type"] for m in e.get("members", [])}
        for v in e.get("variants", []):
            found.update(self.members(v.get("type")))
        return found

    def enum(self, type_name: str | None) -> tuple[str, ...]:
        e = self.by_name.get(type_name or "")
        if not e:
            return ()
        if e.get("meta-type") == "enum":
            return tuple(e.get("values") or [m["name"] for m in e.get("members", [])])
        return ()

    def element(self, type_name: str | None) -> str | None:
        """The element type of an array type."""
        e = self.by_name.get(type_name or "")
        return e.get("element-type") if e and e.get("meta-type") == "array" else None

    def args(self, command: str) -> dict[str, str]:
        c = self.command(command)
        return self.members(c.get("arg-type")) if c else {}


def read_capabilities(version: dict[str, Any], schema: list[dict[str, Any]]) -> Capabilities:
    """The capabilities in a ``query-version`` reply and a ``query-qmp-schema`` reply."""
    s = Schema(schema)
    q = version["qemu"]
    mirror = s.args("blockdev-mirror")
    jobs_cmd = s.command("query-block-jobs")
    job_members = s.members(s.element(jobs_cmd.get("ret-type")) if jobs_cmd else None)
    return Capabilities(
        version=f"{q['major']}.{q['minor']}.{q['micro']}",
        package=str(version.get("package", "")).strip(),
        copy_modes=s.enum(mirror.get("copy-mode")),
        block_job_change=s.command("block-job-change") is not None,
        actively_synced="actively-synced" in job_members,
        error_policies=s.enum(mirror.get("on-target-error")),
        mirror_args=tuple(sorted(mirror)),
        trace_control=s.command("trace-event-set-state") is not None,
        commands=sum(1 for e in schema if e.get("meta-type") == "command"))
