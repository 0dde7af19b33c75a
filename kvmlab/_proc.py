"""Run host tools with an argument list (never a shell) and turn failures into ToolError."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvmlab.errors import ToolError


def qemu_opt(value: str | Path) -> str:
    """A value inside a QEMU option string: commas are doubled (``a,b`` -> ``a,,b``)."""
    return str(value).replace(",", ",,")


def which(tool: str) -> str:
    """Absolute path of *tool*, or ToolError naming the missing program."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not found:
        raise ToolError(f"{tool} not found on PATH (install it, e.g. 'make setup')")
    return found


def run(cmd: Sequence[str | Path], *, input: bytes | None = None, cwd: Path | None = None,
        timeout: float = 600, env: Mapping[str, str] | None = None) -> str:
    """Run *cmd*; return its stdout as text; raise ToolError with its stderr on failure."""
    args = [str(c) for c in cmd]
    args[0] = which(args[0])
    try:
        proc = subprocess.run(args, input=input, cwd=cwd, capture_output=True, timeout=timeout,
                              check=False, env=env)
    except subprocess.TimeoutExpired as err:
        raise ToolError(f"{Path(args[0]).name} timed out after {timeout:.0f} s",
                        command=args) from err
    if proc.returncode != 0:
        err_text = proc.stderr.decode(errors="replace").strip()
        last = err_text.splitlines()[-1] if err_text else f"exit code {proc.returncode}"
        raise ToolError(f"{Path(args[0]).name} failed: {last}", command=args, output=err_text)
    return proc.stdout.decode(errors="replace")


def run_rc(cmd: Sequence[str | Path], timeout: float = 600,
           env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run *cmd* and return (exit code, stdout, stderr) without judging the exit code."""
    args = [str(c) for c in cmd]
    args[0] = which(args[0])
    proc = subprocess.run(args, capture_output=True, timeout=timeout, check=False, env=env)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def alive(pid: int) -> bool:
    """Is there a process *pid* (ours or another user's)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_ticks(pid: int) -> int | None:
    """When *pid* started (clock ticks since boot; None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])   # field 22, after the command name


def owner_token(pid: int | None = None) -> dict[str, object]:
    """Who owns something (a run): host, pid and the pid's start time, so a reused pid is
    not mistaken for the owner."""
    pid = pid or os.getpid()
    return {"host": os.uname().nodename, "pid": pid, "start": _start_ticks(pid)}


def owner_dead(token: object) -> bool:
    """Is the owner in *token* (from :func:`owner_token`) known to be gone?  False when it
    cannot be told (another host, a malformed token)."""
    if not isinstance(token, dict) or token.get("host") != os.uname().nodename:
        return False
    pid = token.get("pid")
    if not isinstance(pid, int):
        return False
    start = _start_ticks(pid)
    return start is None or (token.get("start") is not None and start != token.get("start"))
