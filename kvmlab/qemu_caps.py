"""What a QEMU build can do for a mirror, read from the build itself, once.

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

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import _proc
from .backends.qmp import QMPBackend
from .builds import SYSTEM, QemuBuild, builds_dir
from .errors import LaunchError
from .tmpdirs import owned_tmpdir

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


def probe(build: QemuBuild, timeout: float = 30) -> Capabilities:
    """Start *build*'s emulator without a machine and read its capabilities over QMP.
    Nothing is left running, whatever happens."""
    tmp = owned_tmpdir("kvmlab-caps-")
    sock = tmp / "qmp.sock"
    qmp: QMPBackend | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        qmp = QMPBackend.listen(sock)
        cmd = [_proc.which("setpriv"), "--pdeathsig", "KILL", "--", str(build.emulator),
               *build.emulator_args(), "-M", "none", "-nodefaults", "-display", "none",
               "-chardev", f"socket,id=qmp0,path={_proc.qemu_opt(sock)}",
               "-mon", "chardev=qmp0,mode=control"]
        with open(tmp / "qemu.err", "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=build.env(), start_new_session=True)
        running = proc

        def exited() -> str | None:
            code = running.poll()
            if code is None:
                return None
            text = (tmp / "qemu.err").read_text(errors="replace").strip()
            return f"QEMU exited with code {code}" + (f": {text.splitlines()[-1]}"
                                                      if text else "")
        try:
            qmp.accept(timeout, exited)
        except LaunchError as err:
            raise LaunchError(f"capability probe of QEMU build {build.name}: {err}") from err
        caps = read_capabilities(qmp.execute("query-version"), qmp.execute("query-qmp-schema"))
        try:
            qmp.execute("quit", timeout=5)
        except Exception:  # noqa: BLE001 - killed below if it did not quit
            pass
        return caps
    finally:
        if qmp is not None:
            qmp.close()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_file(build: QemuBuild) -> Path:
    if build.root is not None:
        return build.root / "caps.json"
    safe = SYSTEM if build.name == SYSTEM else "path-" + "".join(
        c if c.isalnum() else "-" for c in build.name)[-80:]
    return builds_dir() / f".caps-{safe}.json"


def _key(build: QemuBuild) -> list[Any]:
    st = build.emulator.stat()
    return [CACHE_VERSION, str(build.emulator), st.st_size, st.st_mtime_ns]


_MEMO: dict[tuple[Any, ...], Capabilities] = {}


def capabilities(build: QemuBuild) -> Capabilities:
    """*build*'s capabilities: from memory, from its cache file, else probed and cached."""
    key = _key(build)
    if tuple(key) in _MEMO:
        return _MEMO[tuple(key)]
    cache = _cache_file(build)
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            caps = Capabilities.from_dict(saved["caps"])
            _MEMO[tuple(key)] = caps
            return caps
    except (OSError, ValueError, KeyError, TypeError):
        pass
    caps = probe(build)
    _MEMO[tuple(key)] = caps
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "caps": caps.to_dict()}, indent=1) + "\n")
        tmp.replace(cache)
    except OSError:
        pass
    return caps
