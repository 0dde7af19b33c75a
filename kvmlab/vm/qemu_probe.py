"""Ask a QEMU build what it can do: start it without a machine, read its QMP schema once,
and keep the answer (:mod:`kvmlab.qemu.caps` reads the schema; this module launches QEMU).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kvmlab import _proc, trust
from kvmlab.backends.qmp import QMPBackend
from kvmlab.errors import KvmlabError, LaunchError, Untrusted
from kvmlab.qemu.builds import SYSTEM, QemuBuild, builds_dir
from kvmlab.qemu.caps import CACHE_VERSION, Capabilities, read_capabilities
from kvmlab.store.tmpdirs import owned_tmpdir


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
        saved = json.loads(trust.read_owned(cache))      # another user's: not trusted
        if saved.get("key") == key:
            caps = Capabilities.from_dict(saved["caps"])
            _MEMO[tuple(key)] = caps
            return caps
    except (OSError, ValueError, KeyError, TypeError, Untrusted):
        pass
    caps = probe(build)
    _MEMO[tuple(key)] = caps
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        trust.write_atomic(cache, json.dumps({"key": key, "caps": caps.to_dict()}, indent=1) + "\n")
    except OSError:
        pass
    return caps


def describe(build: QemuBuild) -> dict[str, Any]:
    """What ``run.json`` keeps of *build*: name, version, paths and capabilities."""
    return {**build.describe(), "caps": capabilities(build).to_dict()}


def recorded(build: QemuBuild) -> dict[str, Any]:
    """:func:`describe`, or what could be told when the build cannot be asked (provenance
    never stops a run: a QEMU that cannot start fails the run where it starts)."""
    try:
        return describe(build)
    except (KvmlabError, OSError) as err:
        return {"name": build.name, "emulator": str(build.emulator), "error": str(err)}
