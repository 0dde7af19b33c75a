"""A mirror target served over NBD by ``qemu-storage-daemon`` on a unix socket.

The remote-server-down cases of tp-qemu, on one host: the daemon exports an
image; the mirror writes to ``nbd+unix:///<name>?socket=<path>`` (with
``mode=existing``).  :meth:`NbdServer.suspend` SIGSTOPs the daemon (the socket
stays up, requests hang); :meth:`NbdServer.down` kills it and starts a new one
on the same image when the block ends (requests fail meanwhile).

With ``write_bps`` the export is a *slow target*: a ``throttle`` filter node in a
throttle group (``limits.bps-write``) sits between the export and the image, so every
write the mirror (or, in the active mode, the guest through the mirror) sends waits its
turn: the case of a target on a slow network or a busy array.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmlab import marks
from kvmlab._proc import qemu_opt
from kvmlab.errors import BadInput, StateError
from kvmlab.faults.base import (
    Mark,
    ProcessGroup,
    SocketDaemon,
    no_mark,
    private_tmpdir,
    unix_listening,
    wait_until,
)
from kvmlab.model import check_speed
from kvmlab.qemu import builds
from kvmlab.qemu.builds import QemuBuild

EXPORT = "target"


class NbdServer(SocketDaemon):
    """``qemu-storage-daemon`` exporting *image* (format *fmt*) writable over NBD.

    *write_bps* > 0 limits the export's writes to that many bytes/s (a throttle group).

    A context manager; on exit the daemon is stopped and its temp dir removed.  The daemon
    is the current QEMU build's (:func:`kvmlab.qemu.builds.current`), or *qemu*'s.
    """

    SOCKET = "nbd.sock"

    def __init__(self, image: str | Path, fmt: str = "qcow2", *, mark: Mark | None = None,
                 qemu: str | Path | QemuBuild | None = None, write_bps: int = 0) -> None:
        self.build = builds.resolve(qemu)
        self.write_bps = check_speed(write_bps, "write_bps")
        self.image = Path(image).resolve()
        if not self.image.is_file():
            raise BadInput(f"NBD image {self.image} does not exist")
        if fmt not in ("raw", "qcow2"):
            raise BadInput(f"NBD image format {fmt!r} must be raw or qcow2")
        self.fmt = fmt
        self.mark = mark or no_mark
        self.starts = 0


    @property
    def url(self) -> str:
        """The target QEMU opens (format ``raw``: the daemon serves the guest-visible data)."""
        return f"nbd+unix:///{EXPORT}?socket={self.socket}"

    def __enter__(self) -> NbdServer:
        try:
            self.tmp = private_tmpdir()
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        assert self.tmp is not None
        sock = self.socket
        if sock.exists():
            sock.unlink()
        node = "fmt0"
        cmd = [self.build.tool("qemu-storage-daemon"),
               "--blockdev", f"driver=file,node-name=file0,filename={qemu_opt(self.image)},"
                             "cache.direct=on,aio=threads",
               "--blockdev", f"driver={self.fmt},node-name=fmt0,file=file0"]
        if self.write_bps:
            node = "thr0"
            cmd += ["--object", f"throttle-group,id=tg0,limits.bps-write={self.write_bps}",
                    "--blockdev", "driver=throttle,node-name=thr0,throttle-group=tg0,file=fmt0"]
        cmd += ["--nbd-server", f"addr.type=unix,addr.path={qemu_opt(sock)}",
                "--export", f"type=nbd,id=exp0,node-name={node},name={EXPORT},writable=on"]
        self.daemon = ProcessGroup("qemu-storage-daemon", cmd, self.tmp / f"qsd-{self.starts}.log",
                                   env=self.build.env())
        self.starts += 1
        self.daemon.start()
        wait_until(lambda: unix_listening(sock), 30, "qemu-storage-daemon",
                   self.daemon.check_alive)

    @contextmanager
    def suspend(self) -> Iterator[None]:
        """SIGSTOP the daemon for the block (marked ``nbd_suspend``)."""
        if not self.running:
            raise StateError("the NBD server is not running")
        assert self.daemon is not None
        self.daemon.signal(19)
        self.mark(marks.start(marks.NBD_SUSPEND))
        try:
            yield
        finally:
            self.daemon.signal(18)
            self.mark(marks.end(marks.NBD_SUSPEND))

    @contextmanager
    def down(self) -> Iterator[None]:
        """Kill the daemon for the block, then start a new one (marked ``nbd_down``)."""
        if not self.running:
            raise StateError("the NBD server is not running")
        assert self.daemon is not None
        self.daemon.signal(9)
        self.daemon.stop()
        self.mark(marks.start(marks.NBD_DOWN))
        try:
            yield
        finally:
            self._start()
            self.mark(marks.end(marks.NBD_DOWN))
