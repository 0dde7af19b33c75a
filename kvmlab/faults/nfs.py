"""A real NFS server on loopback: nfs-ganesha (VFS backend) with rpcbind.

There is no kernel NFS server on these machines; the userspace server
``ganesha.nfsd`` exports one folder over NFSv3 on 127.0.0.1, and QEMU's own
NFS client (libnfs, from ``qemu-block-extra``) opens
``nfs://127.0.0.1/<folder>/<file>`` -- NFSv3 mounts by the export's *Path*.

The seed's experiment 2 stops the NFS service mid-mirror and starts it again:
:meth:`NfsServer.outage` does that in two modes,

- ``stop``: the server process ends (SIGTERM, as ``service nfs stop``), and a
  new one starts on the same export when the outage ends;
- ``freeze``: SIGSTOP, then SIGCONT -- a hard-mounted server that hangs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from kvmlab import _proc, marks, trust
from kvmlab.errors import BadInput, LaunchError, StateError
from kvmlab.faults.base import Mark, ProcessGroup, no_mark, private_tmpdir, remove_tree, wait_until

OUTAGE_MODES = ("stop", "freeze")
RPCBIND_SOCK = Path("/run/rpcbind.sock")
#: one kvmlab NFS server at a time on this host (one port 2049, one rpcbind): runs that
#: need one side by side (``kvmlab seed``, a sweep) take turns on this lock
LOCK_NAME = "kvmlab-nfs.lock"
#: how long :meth:`NfsServer.start` waits for another kvmlab NFS server to end
LOCK_WAIT_S = 600.0

log = logging.getLogger(__name__)


def lock_path() -> Path:
    """``kvmlab-nfs.lock`` in kvmlab's private state folder (``/run/kvmlab``, 0700): no
    other user can open it, so none can hold it to block our runs."""
    return trust.state_dir() / LOCK_NAME


def take_turn(wait_s: float = LOCK_WAIT_S) -> int:
    """Hold the host's NFS lock (an ``flock``: the kernel drops it when we die, so a killed
    run never blocks the next); wait up to *wait_s* for another run to let it go.

    :return: the lock's file descriptor (close it to let go).
    :raise LaunchError: another kvmlab NFS server held it for *wait_s*.
    """
    return trust.take_lock(
        lock_path(), wait_s, "waiting for another kvmlab run's NFS server to end",
        LaunchError(f"another kvmlab NFS server has been running for over {wait_s:.0f} s "
                    f"(lock {lock_path()})"))

CONFIG = """\
NFS_CORE_PARAM {{
    Protocols = 3;
    Bind_addr = 127.0.0.1;
    NFS_Port = {port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSv4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{tmp}/recovery";
}}
EXPORT_DEFAULTS {{
    Access_Type = None;
    Squash = Root_Squash;
    PrivilegedPort = true;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "/kvmlab";
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    Access_Type = None;
    Squash = Root_Squash;
    PrivilegedPort = true;
    CLIENT {{
        Clients = 127.0.0.1;
        Access_Type = RW;
        Squash = No_Root_Squash;
        PrivilegedPort = true;
    }}
    FSAL {{ Name = VFS; }}
}}
LOG {{
    Default_Log_Level = EVENT;
}}
"""


#: rpcbind under a small supervisor.  Socket activation done by hand: the sockets become
#: fds 3.. of rpcbind, which then listens on them alone instead of on every address
#: (rpcbind's own ``-h`` binds only UDP); LISTEN_PID must be rpcbind's pid, known only
#: after the fork.  And rpcbind drops to its own user after starting, which clears the
#: parent-death signal: so the supervisor (root, with ``setpriv --pdeathsig TERM``) stays,
#: stops rpcbind when it is told to or its owner dies (even by SIGKILL), and exits with it.
ACTIVATE = """\
import fcntl, os, signal, sys
given = [int(f) for f in sys.argv[1].split(",")]
fds = [fcntl.fcntl(f, fcntl.F_DUPFD, 100) for f in given]
for f in given:
    os.close(f)
child = os.fork()
if child == 0:
    for i, fd in enumerate(fds):
        os.dup2(fd, 3 + i)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(sys.argv[2], sys.argv[2:])
for fd in fds:
    os.close(fd)
def stop(signum, frame):
    try:
        os.kill(child, signal.SIGTERM)
    except ProcessLookupError:
        pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, stop)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def rpcbind_sockets() -> list[socket.socket]:
    """rpcbind's sockets, loopback only: its unix socket (where ganesha registers), TCP and
    UDP port 111 on 127.0.0.1 and on ::1 (where the host has IPv6)."""
    socks: list[socket.socket] = []
    try:
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.append(unix)
        unix.bind(str(RPCBIND_SOCK))
        unix.listen(64)
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(family, kind)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, 111))
                except OSError:
                    if family != socket.AF_INET6:
                        raise
                    socks.remove(s)         # no IPv6 loopback here: rpcbind cannot use it
                    s.close()                # either, so it makes no wildcard one
                    continue
                if kind == socket.SOCK_STREAM:
                    s.listen(64)
    except OSError as err:
        for s in socks:
            s.close()
        raise LaunchError(f"rpcbind's loopback sockets: {err.strerror or err}") from err
    return socks


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _registered(program: str) -> bool:
    rc, out, _ = _proc.run_rc(["rpcinfo", "-p", "127.0.0.1"], timeout=10)
    return rc == 0 and any(program in line.split() for line in out.splitlines())


class NfsServer:
    """nfs-ganesha exporting *export_dir* on 127.0.0.1 (NFSv3 over TCP).

    A context manager: on exit the server, and the rpcbind it started (if
    none was running), are stopped and its temp dir removed.

    :param export_dir: an existing folder on a local file system.
    :param mark: records fault events (``Recorder.mark``).
    :param lock_wait_s: how long to wait for another kvmlab NFS server to end.
    """

    def __init__(self, export_dir: str | Path, *, mark: Mark | None = None,
                 port: int = 2049, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.export_dir = Path(export_dir).resolve()
        if not self.export_dir.is_dir():
            raise BadInput(f"NFS export folder {self.export_dir} does not exist")
        if "," in str(self.export_dir) or '"' in str(self.export_dir):
            raise BadInput(f"NFS export folder {self.export_dir} may not contain ',' or '\"'")
        self.port = port
        self.mark = mark or no_mark
        self.tmp: Path | None = None
        self.rpcbind: ProcessGroup | None = None
        self.server: ProcessGroup | None = None
        self.starts = 0
        self._lock: int | None = None
        self.lock_wait_s = lock_wait_s

    def __enter__(self) -> NfsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, name: str) -> str:
        """The ``nfs://`` URL QEMU opens for file *name* in the export."""
        if "/" in name or not name:
            raise BadInput(f"NFS file name {name!r} must be a plain file name")
        return f"nfs://127.0.0.1{quote(str(self.export_dir / name))}"   # spaces -> %20

    def start(self) -> None:
        """Take this host's turn (:func:`take_turn`), start rpcbind (if none runs) and the
        server; return once it serves."""
        if self._lock is None:
            self._lock = take_turn(self.lock_wait_s)
        try:
            if _port_open(self.port) and (self.server is None or not self.server.running):
                raise LaunchError(f"port {self.port} on 127.0.0.1 is taken: another NFS "
                                  "server runs")
            if self.tmp is None:
                self.tmp = private_tmpdir()
                (self.tmp / "recovery").mkdir()
                (self.tmp / "ganesha.conf").write_text(CONFIG.format(
                    port=self.port, tmp=self.tmp, export=self.export_dir))
            self._ensure_rpcbind()
            self._start_server()
        except BaseException:
            self.close()
            raise

    def _ensure_rpcbind(self) -> None:
        assert self.tmp is not None
        if self.rpcbind is not None or _registered("portmapper"):
            return
        if RPCBIND_SOCK.exists():
            RPCBIND_SOCK.unlink()           # a stale socket from a killed rpcbind
        Path("/run/rpcbind").mkdir(exist_ok=True)
        socks = rpcbind_sockets()
        try:
            self.rpcbind = ProcessGroup(
                "rpcbind", [sys.executable, "-c", ACTIVATE, ",".join(str(s.fileno()) for s in socks),
                            _proc.which("rpcbind"), "-f", "-w"],
                self.tmp / "rpcbind.log", pass_fds=[s.fileno() for s in socks],
                pdeathsig="TERM")          # the supervisor stops rpcbind, then exits
            self.rpcbind.start()
        finally:
            for s in socks:
                s.close()                   # rpcbind holds its own copies
        wait_until(lambda: _registered("portmapper"), 15, "rpcbind", self.rpcbind.check_alive)

    def _start_server(self) -> None:
        assert self.tmp is not None
        self.server = ProcessGroup(
            "ganesha.nfsd",
            ["ganesha.nfsd", "-F", "-f", self.tmp / "ganesha.conf", "-L",
             self.tmp / f"ganesha-{self.starts}.log", "-p", self.tmp / "ganesha.pid",
             "-N", "NIV_EVENT"],
            self.tmp / f"ganesha-{self.starts}.out")
        self.starts += 1
        self.server.start()
        wait_until(lambda: _port_open(self.port) and _registered("mountd"), 60,
                   "ganesha.nfsd", self._server_alive)

    def _server_alive(self) -> None:
        if self.server is not None and self.server.proc is not None \
                and self.server.proc.poll() is not None:
            log = self.tmp / f"ganesha-{self.starts - 1}.log" if self.tmp else None
            tail = log.read_text(errors="replace")[-300:] if log and log.exists() else ""
            raise LaunchError(f"ganesha.nfsd exited with code {self.server.proc.returncode}: "
                              f"{tail.strip()}", exitcode=self.server.proc.returncode)

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.running

    def stop_server(self) -> None:
        """End the server process, as ``service nfs stop`` (rpcbind stays)."""
        if self.server is not None:
            self.server.stop()

    def restart_server(self) -> None:
        """Start a new server process on the same export."""
        if self.running:
            raise StateError("the NFS server is running")
        self._start_server()

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps its sockets but answers nothing."""
        if not self.running:
            raise StateError("the NFS server is not running")
        assert self.server is not None
        self.server.signal(19)

    def thaw(self) -> None:
        if self.server is not None:
            self.server.signal(18)

    @contextmanager
    def outage(self, mode: str = "stop") -> Iterator[None]:
        """The server is away for the duration of the block, in *mode* ``stop`` or ``freeze``.

        Marks ``nfs_outage_start`` when the server is gone and ``nfs_outage_end``
        once it serves again (for ``stop``: after the new server is up).
        """
        if mode not in OUTAGE_MODES:
            raise BadInput(f"outage mode {mode!r} is not one of {', '.join(OUTAGE_MODES)}")
        if mode == "stop":
            self.stop_server()
        else:
            self.freeze()
        self.mark(marks.start(marks.NFS_OUTAGE), mode=mode)
        try:
            yield
        finally:
            t0 = time.monotonic()
            if mode == "stop":
                self._start_server()
            else:
                self.thaw()
            self.mark(marks.end(marks.NFS_OUTAGE), mode=mode, restart_s=round(time.monotonic() - t0, 3))

    def close(self) -> None:
        """Stop everything this server started and remove its temp dir.  Idempotent."""
        try:
            if self.server is not None:
                self.server.stop()
            if self.rpcbind is not None:
                self.rpcbind.stop()
                self.rpcbind = None
        finally:
            remove_tree(self.tmp)
            self.tmp = None
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

