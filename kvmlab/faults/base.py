"""What every fault shares: marks in the recording, a private temp dir, a daemon process."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kvmlab import _proc
from kvmlab.errors import LaunchError, StateError
from kvmlab.store.tmpdirs import owned_tmpdir

log = logging.getLogger(__name__)

#: Prefix of the temp dirs faults make (reaped like the VMs' when their owner was killed).
TMP_PREFIX = "kvmlab-fault-"

#: A callback that records an event: ``mark(name, **data)`` (e.g. ``Recorder.mark``).
Mark = Callable[..., Any]


def no_mark(name: str, **data: Any) -> float:
    """The mark used when nothing records: log it."""
    log.info("fault mark %s %s", name, data)
    return time.monotonic()


@contextmanager
def marked(mark: Mark | None, name: str, **data: Any) -> Iterator[None]:
    """Mark ``<name>_start`` on entry and ``<name>_end`` on exit (also when the body fails)."""
    m = mark or no_mark
    m(f"{name}_start", **data)
    try:
        yield
    finally:
        m(f"{name}_end", **data)


def private_tmpdir() -> Path:
    """A 0700 temp dir with ``owner.pid``, so a later run can reap it if we are killed."""
    return owned_tmpdir(TMP_PREFIX)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


class ProcessGroup:
    """One daemon in its own session that dies with us (``setpriv --pdeathsig KILL``).

    :param command: the daemon's argument list, run in the foreground.
    :param log_path: where its stdout and stderr go.
    :param pass_fds: descriptors the daemon inherits (sockets made for it).
    :param pdeathsig: the signal it gets when we die (KILL; TERM for a supervisor that
        cleans up after a daemon that changes its user, which clears this signal).
    """

    def __init__(self, name: str, command: Sequence[str | Path], log_path: Path,
                 env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = (),
                 pdeathsig: str = "KILL") -> None:
        self.name = name
        self.pdeathsig = pdeathsig
        self.env = env
        self.pass_fds = tuple(pass_fds)
        self.command = [str(c) for c in command]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self.running:
            raise StateError(f"{self.name} is already running")
        cmd = [_proc.which("setpriv"), "--pdeathsig", self.pdeathsig, "--",
               _proc.which(self.command[0]), *self.command[1:]]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env, pass_fds=self.pass_fds)
        self._finalizer = weakref.finalize(self, _kill, self.proc)

    def check_alive(self) -> None:
        """Raise LaunchError with the log's tail if the daemon has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise LaunchError(f"{self.name} exited with code {self.proc.returncode}: "
                              f"{self.log_tail()}", exitcode=self.proc.returncode,
                              command=self.command, output=self.log_tail(4000))

    def log_tail(self, chars: int = 300) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-chars:].replace("\n", " | ")

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (after SIGCONT, in case it is frozen), then SIGKILL.  Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        if self._finalizer is not None:
            self._finalizer.detach()
        return self.proc.returncode


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               alive: Callable[[], None] | None = None, step: float = 0.05) -> None:
    """Poll *check* until true; call *alive* (which may raise) between polls."""
    deadline = time.monotonic() + timeout
    while not check():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise LaunchError(f"{what} not ready after {timeout:g} s")
        time.sleep(step)


def remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def unix_listening(sock: Path) -> bool:
    """Something accepts connections on unix socket *sock*."""
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(0.2)
        return s.connect_ex(str(sock)) == 0


class SocketDaemon:
    """A daemon kvmlab runs in a private folder of its own, serving on a unix socket there
    (:attr:`SOCKET`).  A context manager: on exit the daemon stops and the folder goes."""

    SOCKET = "daemon.sock"
    tmp: Path | None = None
    daemon: ProcessGroup | None = None

    @property
    def socket(self) -> Path:
        if self.tmp is None:
            raise StateError(f"{type(self).__name__} not started")
        return self.tmp / self.SOCKET

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            remove_tree(self.tmp)
            self.tmp = None
