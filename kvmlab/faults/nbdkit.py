"""An impaired NBD link: nbdkit as a proxy in front of an NBD export, with its filters.

nbdkit (Debian's ``nbdkit``) is the field's tool for this: its ``nbd`` plugin forwards to the
real export, and its ``delay`` and ``rate`` filters add latency to every write and cap the
bandwidth.  kvmlab starts one proxy per export on a unix socket in a private folder; QEMU
then opens the proxy instead of the export.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from kvmlab.errors import BadInput, StateError
from kvmlab.faults.base import ProcessGroup, SocketDaemon, private_tmpdir, unix_listening, wait_until
from kvmlab.trust import write_atomic


class NbdkitProxy(SocketDaemon):
    """nbdkit forwarding to export *export* of the NBD server at unix socket *upstream*
    (or at ``(host, port)``).

    :param delay_write_ms: latency added to every write (the ``delay`` filter).
    :param rate_bps: bandwidth cap, bytes/s (the ``rate`` filter); 0 for none.
    :param error_rate: the share of writes (and zero requests) that fail with EIO (the
        ``error`` filter), 0 to 1; 0 for none.
    :param controls: impairments switched while it runs, by nbdkit's own means: the errors
        only while :meth:`errors` says so (the filter's ``error-*-file``), the bandwidth
        set by :meth:`set_rate` (the ``rate`` filter's ``rate-file``; none until then),
        requests held by :meth:`pause` until :meth:`resume` (the ``pause`` filter's
        control socket).

    A context manager: on exit nbdkit is stopped and its folder removed.
    """

    SOCKET = "nbdkit.sock"

    def __init__(self, upstream: str | Path | tuple[str, int], export: str, *,
                 delay_write_ms: int = 0, rate_bps: int = 0, error_rate: float = 0,
                 controls: bool = False) -> None:
        if shutil.which("nbdkit") is None:
            raise BadInput("nbdkit is not installed: run 'make setup' (Debian's nbdkit)")
        for name, value in (("delay_write_ms", delay_write_ms), ("rate_bps", rate_bps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadInput(f"{name}={value!r} must be a non-negative integer")
        if isinstance(error_rate, bool) or not isinstance(error_rate, (int, float)) \
                or not 0 <= error_rate <= 1:
            raise BadInput(f"error_rate={error_rate!r} must be a share from 0 to 1")
        if not export.replace("-", "").replace("_", "").isalnum():
            raise BadInput(f"export name {export!r} must be letters, digits, - and _")
        self.upstream = upstream if isinstance(upstream, tuple) else Path(upstream)
        self.export = export
        self.delay_write_ms = delay_write_ms
        self.rate_bps = rate_bps
        self.error_rate = float(error_rate)
        self.controls = controls


    @property
    def url(self) -> str:
        """What QEMU opens instead of the export (format raw)."""
        return f"nbd+unix:///{self.export}?socket={self.socket}"

    def command(self) -> list[str]:
        cmd = ["nbdkit", "--foreground", "--exit-with-parent", "--unix", str(self.socket)]
        if self.controls:
            cmd.append("--filter=pause")
        if self.error_rate:
            cmd.append("--filter=error")
        if self.delay_write_ms:
            cmd.append("--filter=delay")
        if self.rate_bps or self.controls:
            cmd.append("--filter=rate")
        where = ([f"hostname={self.upstream[0]}", f"port={self.upstream[1]}"]
                 if isinstance(self.upstream, tuple) else [f"socket={self.upstream}"])
        cmd += ["nbd", *where, f"export={self.export}"]
        if self.delay_write_ms:
            cmd.append(f"delay-write={self.delay_write_ms}ms")
        if self.rate_bps:
            cmd.append(f"rate={self.rate_bps * 8}")          # the filter counts bits/s
        if self.error_rate:
            cmd += ["error=EIO", f"error-pwrite-rate={self.error_rate:g}",
                    f"error-zero-rate={self.error_rate:g}"]
            if self.controls:
                cmd += [f"error-pwrite-file={self._control('errors-on')}",
                        f"error-zero-file={self._control('errors-on')}"]
        if self.controls:
            cmd += [f"rate-file={self._control('rate')}",
                    f"pause-control={self._control('pause.sock')}"]
        return cmd

    def __enter__(self) -> NbdkitProxy:
        try:
            self.tmp = private_tmpdir()
            self.daemon = ProcessGroup("nbdkit", self.command(), self.tmp / "nbdkit.log")
            self.daemon.start()
            wait_until(lambda: unix_listening(self.socket), 30, "nbdkit",
                       self.daemon.check_alive)
        except BaseException:
            self.close()
            raise
        return self

    def _control(self, name: str) -> Path:
        if self.tmp is None:
            raise StateError("the nbdkit proxy is not started")
        return self.tmp / name

    def _need_controls(self) -> None:
        if not self.controls or not self.running:
            raise StateError("the nbdkit proxy runs without controls (controls=True)")

    def errors(self, on: bool) -> None:
        """Inject the write errors (at :attr:`error_rate`) from now on, or stop."""
        self._need_controls()
        flag = self._control("errors-on")
        if on:
            flag.touch(mode=0o600)
        else:
            flag.unlink(missing_ok=True)

    def set_rate(self, bps: int) -> None:
        """The link's bandwidth from now on, bytes/s (0: unlimited); nbdkit reads it back
        within a moment."""
        self._need_controls()
        if isinstance(bps, bool) or not isinstance(bps, int) or bps < 0:
            raise BadInput(f"rate={bps!r} must be a non-negative integer (bytes/s)")
        bits = bps * 8 if bps else 1 << 50                    # "unlimited": a petabit
        write_atomic(self._control("rate"), f"{bits}\n")

    def pause(self, timeout: float = 30) -> None:
        """Hold every request from now on (those in flight complete first)."""
        self._command(b"p", b"P", timeout)

    def resume(self, timeout: float = 30) -> None:
        """Let requests through again."""
        self._command(b"r", b"R", timeout)

    def _command(self, cmd: bytes, ack: bytes, timeout: float) -> None:
        self._need_controls()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self._control("pause.sock")))
            s.sendall(cmd)
            got = s.recv(1)
        if got != ack:
            raise StateError(f"nbdkit's pause filter answered {got!r} to {cmd!r}")

    def kill(self) -> None:
        """The link dies: nbdkit killed (SIGKILL), its connections dropped mid-request."""
        if self.daemon is None or not self.daemon.running:
            raise StateError("the nbdkit proxy is not running")
        self.daemon.signal(9)
