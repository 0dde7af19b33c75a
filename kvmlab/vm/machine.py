"""The embedded lab's QEMU: launch, talk to, and always clean up one VM.

Lifecycle as QEMU's own ``QEMUMachine``: :meth:`Machine.launch` prepares a
private 0700 temp dir (QMP socket, QEMU's stderr log), binds the QMP socket,
starts QEMU, and accepts its connection; :meth:`Machine.shutdown` asks QMP
``quit``, waits, kills if needed, and *always* removes the temp dir.  It is a
context manager, safe to shut down twice, and a finalizer reaps QEMU if the
object is dropped or the interpreter exits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from kvmlab import _proc, paths, trust
from kvmlab._proc import qemu_opt
from kvmlab.backends.base import Backend
from kvmlab.backends.qmp import QMPBackend
from kvmlab.errors import (
    BackendError,
    BadInput,
    GuestFailed,
    KvmlabError,
    LaunchError,
    StateError,
    Untrusted,
    WaitTimeout,
)
from kvmlab.events import Record
from kvmlab.guest.build import TOOLS_SERIAL, Guest, load_guest
from kvmlab.guest.console import Console
from kvmlab.guest.fio import FioJob
from kvmlab.guest.workload import Manifest, Workload
from kvmlab.live import jobs
from kvmlab.model import ACCELS, CACHE_MODES, DriveInfo, MirrorSpec
from kvmlab.qemu import builds, images
from kvmlab.qemu.builds import QemuBuild
from kvmlab.qemu.trace import TraceSpec, strip_stamps
from kvmlab.qemu.trace import check as check_trace
from kvmlab.store.tmpdirs import owned_tmpdir
from kvmlab.vm import qemu_probe, saved
from kvmlab.vm.agent import PORT_NAME as AGENT_PORT
from kvmlab.vm.agent import GuestAgent

log = logging.getLogger(__name__)

GUEST_MODES = ("idle", "workload", "verify")
#: the guest kernel's slowest initcalls (initcall_debug under TCG: 117, 74 and 50 ms of a
#: 2.4 s boot) for what the guest never uses; skipped with initcall_blacklist=
SKIPPED_INITCALLS = ("crypto_kdf108_init", "init_kprobe_trace", "cubictcp_register")
QEMU_BINARY = "qemu-system-x86_64"
#: shapes whose boot could not be saved in this process: they boot (said once, in the log)
_UNSAVABLE: set[str] = set()


class _ResumeFailed(LaunchError):
    """A saved boot did not resume (launch() then boots the VM)."""

    def __init__(self, state: Path, message: str) -> None:
        super().__init__(message)
        self.state = state


#: a drive's discard modes (QEMU's ``-drive discard=``)
DISCARD_MODES = ("ignore", "unmap")


@dataclass(frozen=True)
class Drive:
    """One virtio-blk disk: its image, stable id (the seed's ``drive0``), format and cache mode.

    :ivar data: a data disk: the workload guest mounts it (``/data/vdX``) and writes its
        files there too, so a mirror of it has something to copy and to verify.
    :ivar iothread: the disk's device runs in an iothread of its own (``-object iothread``).
    :ivar blockdev: configured as libvirt and tp-qemu do, ``-blockdev`` (a node named
        :attr:`id`) and a device on it, instead of ``-drive``: unplugging the device then
        leaves the node (and its jobs) alone, where an unplugged ``-drive`` is deleted with
        its jobs cancelled.
    :ivar discard: ``ignore`` (QEMU's default) or ``unmap`` (libvirt's ``discard='unmap'``):
        whether discard requests reach the image.  QEMU 10.0 also unmaps an existing mirror
        target's zero areas only with ``unmap``.
    """

    path: Path
    id: str = "drive0"
    format: str | None = None
    cache: str = "none"
    read_only: bool = False
    data: bool = False
    iothread: bool = False
    blockdev: bool = False
    discard: str = "ignore"

    def __post_init__(self) -> None:
        if self.discard not in DISCARD_MODES:
            raise BadInput(f"discard={self.discard!r} is not one of {', '.join(DISCARD_MODES)}")
        if self.blockdev and self.cache not in BLOCKDEV_CACHE:
            raise BadInput(f"a -blockdev disk takes cache {' or '.join(BLOCKDEV_CACHE)}, "
                           f"not {self.cache!r}")
        if self.cache not in CACHE_MODES:
            raise BadInput(f"cache={self.cache!r} is not one of {', '.join(CACHE_MODES)}")
        if not self.id.replace("_", "").replace("-", "").isalnum():
            raise BadInput(f"drive id {self.id!r} must be letters, digits, - and _")

    def qemu_args(self, index: int) -> list[str]:
        fmt = self.format or images.info(self.path)["format"]
        device = f"virtio-blk-pci,drive={self.id},id=vd{index}"
        extra: list[str] = []
        if self.iothread:
            extra = ["-object", f"iothread,id=io-{self.id}"]
            device += f",iothread=io-{self.id}"
        if self.blockdev:
            node = {"driver": fmt, "node-name": self.id, "read-only": self.read_only,
                    "cache": {"direct": BLOCKDEV_CACHE[self.cache]},
                    **({"discard": "unmap"} if self.discard == "unmap" else {}),
                    "file": {"driver": "file", "filename": str(self.path)}}
            return [*extra, "-blockdev", json.dumps(node), "-device", device]
        opts = [f"file={qemu_opt(self.path)}", f"format={fmt}", "if=none", f"id={self.id}",
                f"cache={self.cache}"]
        if self.read_only:
            opts.append("readonly=on")
        if self.discard == "unmap":
            opts.append("discard=unmap")
        return [*extra, "-drive", ",".join(opts), "-device", device]


def data_drive(folder: Path, k: int, *, size_mib: int = 32, fill_mib: int = 0,
               fmt: str = "qcow2", cache: str = "none", **kw: Any) -> tuple[Drive, Manifest]:
    """Data disk number *k* (``data<k>``) made in *folder*: the :class:`Drive` the guest
    mounts and writes, and what it holds (*fill_mib* of random data)."""
    path = Path(folder) / f"data{k}.{fmt}"
    base = images.make_guest_disk(path, size_mib, fmt, fill_mib)
    return Drive(path, f"data{k}", fmt, cache, data=True, **kw), base


def guest_dev(index: int) -> str:
    """The guest's name for the *index*-th virtio disk: ``vda``, ``vdb``..."""
    return "vd" + chr(ord("a") + index)


#: the cache modes a ``-blockdev`` disk takes, and its ``cache.direct``
BLOCKDEV_CACHE = {"none": True, "writeback": False}

TMP_PREFIX = "kvmlab-vm-"
#: seconds a wait on the console gives its reader, once QEMU has exited, to deliver the
#: last lines before it says QEMU exited
CONSOLE_DRAIN_S = 2.0


def exit_text(returncode: int) -> str:
    """How QEMU ended, as one line: ``QEMU exited: killed by signal 9`` or ``... code 1``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"QEMU exited: killed by signal {-returncode} ({name})"
    return f"QEMU exited with code {returncode}"


def _serial_path(qmp_sock: Path) -> Path:
    """Where a VM's serial console socket is, beside its QMP socket (in its private dir)."""
    return qmp_sock.with_name(f"{qmp_sock.stem}-serial.sock")


def _serial_listener(path: Path) -> socket.socket:
    """Bind *path* for QEMU's serial chardev to connect to (it does so as it starts, before
    the guest runs: nothing the guest prints is lost before :func:`_accept_serial`).

    The console is a socket of its own, not QEMU's stdout: QEMU prints to its stdout too
    (``Formatting '...'`` when ``drive-mirror`` or a snapshot creates an image), and on a
    shared stream that text ran into the middle of a guest line (a fio status line read
    ``w_lat=194Formatting``; a ``KVMLAB`` record's checksum could be cut the same way)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(1)
        sock.settimeout(0.1)
    except BaseException:
        sock.close()
        raise
    return sock


def _accept_serial(listener: socket.socket, timeout: float,
                   abort: Callable[[], str | None]) -> socket.socket:
    """QEMU's serial connection on *listener*; give up early when *abort* gives a reason."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            why = abort()
            if why or time.monotonic() > deadline:
                raise LaunchError(f"the serial console was not connected: "
                                  f"{why or 'timed out'}") from None
            continue
        conn.setblocking(True)
        return conn


def _reap(proc: subprocess.Popen[bytes] | None, tmpdir: str | None) -> None:
    """Finalizer: kill QEMU and remove the temp dir (runs at GC or interpreter exit)."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


class Machine:
    """One QEMU VM running the kvmlab guest.

    :param disk: the primary image (``drive0``), or a :class:`Drive`; None boots diskless.
    :param mode: guest mode: ``idle``, ``workload`` or ``verify``.
    :param workload: parameters for ``workload`` mode.
    :param manifest: what ``verify`` mode checks (passed by fw_cfg).
    :param cache: cache mode of the primary disk (``none`` as in the seed).
    :param accel: ``auto`` (KVM only if a guest really boots under it), ``kvm`` or ``tcg``.
    :param qemu: the QEMU build (a name such as ``10.0``, a binary's path, a
        :class:`~kvmlab.qemu.builds.QemuBuild`); None: the current one (``system`` by default).
    :param console_log: file to append the raw serial console to.
    :param tools: attach the guest's read-only tools disk (fio), mounted at ``/tools``.
    :param fio: a fio job (:mod:`kvmlab.guest.fio`) the workload guest runs beside its file
        operations, passed by fw_cfg; it implies *tools*.
    :param trace: QEMU's trace events of this VM, written to ``trace.path`` (see
        :mod:`kvmlab.qemu.trace`); an event the build lacks is :class:`BadInput` here.
    :param die_with_parent: QEMU gets SIGKILL if the thread that launched it dies
        (``setpriv --pdeathsig``), so even a ``kill -9`` of Python leaves no VM
        behind.  Launch from a thread that outlives the VM, or pass False.
    :param saved_boot: under TCG, resume the guest's boot saved for this VM's shape (saving it
        first when there is none) instead of booting (:mod:`kvmlab.vm.saved`); False
        boots; None: as ``KVMLAB_SAVED_GUESTS`` says (on unless 0).  Not with
        *extra_args* (they may ask for their own start).
    """

    def __init__(self, disk: str | Path | Drive | None = None, *, mode: str = "idle",
                 workload: Workload | None = None, manifest: Manifest | None = None,
                 cache: str = "none", disk_format: str | None = None,
                 extra_drives: Sequence[Drive] = (), accel: str = "auto", memory_mib: int = 256,
                 guest: Guest | None = None, qemu: str | Path | QemuBuild | None = None,
                 console_log: str | Path | None = None, name: str = "kvmlab",
                 extra_args: Sequence[str] = (), boot_timeout: float = 60,
                 die_with_parent: bool = True, agent: bool = False,
                 trace: TraceSpec | None = None, tools: bool = False,
                 fio: FioJob | None = None, saved_boot: bool | None = None) -> None:
        if mode not in GUEST_MODES:
            raise BadInput(f"mode={mode!r} is not one of {', '.join(GUEST_MODES)}")
        if accel not in ACCELS:
            raise BadInput(f"accel={accel!r} is not one of {', '.join(ACCELS)}")
        if cache not in CACHE_MODES:
            raise BadInput(f"cache={cache!r} is not one of {', '.join(CACHE_MODES)}")
        if mode == "verify" and manifest is None:
            raise BadInput("verify mode needs a manifest")
        if fio is not None and mode != "workload":
            raise BadInput(f"a fio workload runs in workload mode, not {mode}")
        drives: list[Drive] = []
        if disk is not None:
            drives.append(disk if isinstance(disk, Drive) else
                          Drive(Path(disk), format=disk_format, cache=cache))
        drives.extend(extra_drives)
        if len(drives) > 8:
            raise BadInput(f"{len(drives)} disks: the lab VM takes at most 8")
        for d in drives:
            if not Path(d.path).is_file():
                raise BadInput(f"disk image {d.path} does not exist")
        if len({d.id for d in drives}) != len(drives):
            raise BadInput("drive ids must be unique")
        self.drives = drives
        self.mode = mode
        self.workload = workload or Workload()
        self.manifest = manifest
        self.guest = guest or load_guest()
        self.build = builds.resolve(qemu)
        self.qemu = str(self.build.emulator)
        self.requested_accel = accel
        self.accel: str | None = None
        self.memory_mib = memory_mib
        self.name = name
        self.extra_args = list(extra_args)
        self.console_log = Path(console_log) if console_log else None
        self.boot_timeout = boot_timeout
        self.die_with_parent = die_with_parent
        self.with_agent = agent
        if trace is not None:
            trace = dataclasses.replace(trace, events=check_trace(trace.events, self.build))
        self.trace = trace
        if agent and not self.guest.has_agent:
            raise BadInput("this guest has no qemu-ga: install qemu-guest-agent, then "
                           "'kvmlab guest build --force'")
        #: the fio job the guest runs beside its file operations (from its tools disk)
        self.fio = fio
        tools = tools or fio is not None
        #: the guest's read-only tools disk (fio), mounted at /tools in the guest
        self.tools = self.guest.tools if tools else None
        if tools and self.tools is None:
            raise BadInput("this guest has no tools disk (fio): install fio, then "
                           "'kvmlab guest build --force'")
        self._agent: GuestAgent | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._exit_seen: float | None = None   #: when a wait first saw QEMU gone
        self._tmpdir: str | None = None
        self._backend: Backend | None = None
        self._qmp: QMPBackend | None = None
        self._console: Console | None = None
        self._launched = False
        self._accel_wanted = "tcg"
        self._manifest_file: Path | None = None
        self._fio_file: Path | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.exitcode: int | None = None
        self.command: list[str] = []
        self.saved_boot = saved_boot
        #: the saved boot this VM resumed from (None: it booted)
        self.resumed_from: Path | None = None
        #: the serial console's socket, and its two ends as files (the guest's input and
        #: output: a resumed guest is given its parameters on the console)
        self._serial: socket.socket | None = None
        self._serial_in: IO[bytes] | None = None
        self._stdin: IO[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self) -> Self:
        self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def disk_id(self) -> str:
        """How the job API names the first disk: ``drive0`` here (the seed's name)."""
        return self.drives[0].id if self.drives else "drive0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def tmpdir(self) -> Path | None:
        return Path(self._tmpdir) if self._tmpdir else None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise StateError("machine is not running: call launch() first")
        return self._backend

    @property
    def console(self) -> Console:
        if self._console is None:
            raise StateError("machine is not running: call launch() first")
        return self._console

    def kernel_cmdline(self) -> str:
        # cryptomgr.notests: the kernel's crypto self-tests take about 15 % of a boot under
        # TCG (benchmarks/run.py boot: 0.81x with them skipped), and nothing in the guest
        # relies on them.  SKIPPED_INITCALLS: the slowest initcalls of what the guest never
        # uses (a key-derivation self-test, kprobe trace events, TCP's cubic)
        args = ["console=ttyS0", "quiet", "loglevel=3", "panic=-1", "cryptomgr.notests",
                "initcall_blacklist=" + ",".join(SKIPPED_INITCALLS), f"kvmlab.mode={self.mode}"]
        if self.mode == "workload":
            args += self.workload.kernel_args()
            data = [guest_dev(i) for i, d in enumerate(self.drives) if d.data and i > 0]
            if data:
                args.append("kvmlab.data=" + ",".join(data))
        if self.with_agent:
            args.append("kvmlab.qga=1")
        if self.tools is not None:
            args.append("kvmlab.tools=1")
        if self.fio is not None:
            args.append("kvmlab.fio=1")
        return " ".join(args)

    def _command(self, accel: str, qmp_sock: Path, manifest_file: Path | None, *,
                 trace: bool = True, append: str | None = None) -> list[str]:
        cmd = [self.qemu, *self.build.emulator_args(), "-name", self.name, "-accel", accel,
               "-m", str(self.memory_mib),
               "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
               "-no-reboot", "-kernel", str(self.guest.kernel), "-initrd", str(self.guest.initrd),
               "-append", self.kernel_cmdline() if append is None else append,
               "-chardev", f"socket,id=qmp0,path={qemu_opt(qmp_sock)}",
               "-mon", "chardev=qmp0,mode=control",
               "-chardev", f"socket,id=ser0,path={qemu_opt(_serial_path(qmp_sock))}",
               "-serial", "chardev:ser0"]
        for i, d in enumerate(self.drives):
            cmd += d.qemu_args(i)
        if self.with_agent:
            sock = qmp_sock.parent / "qga.sock"
            cmd += ["-device", "virtio-serial-pci,id=vser0",
                    "-chardev", f"socket,id=qga0,path={qemu_opt(sock)},server=on,wait=off",
                    "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={AGENT_PORT}"]
        if self.tools is not None:     # not one of the VM's disks: no job, no record
            cmd += ["-drive", f"if=none,id={TOOLS_SERIAL},file={qemu_opt(self.tools)},"
                              "format=raw,readonly=on",
                    "-device", f"virtio-blk-pci,drive={TOOLS_SERIAL},serial={TOOLS_SERIAL}"]
        if manifest_file is not None:
            cmd += ["-fw_cfg", f"name=opt/kvmlab/manifest,file={qemu_opt(manifest_file)}"]
        if self._fio_file is not None:
            cmd += ["-fw_cfg", f"name=opt/kvmlab/fio,file={qemu_opt(self._fio_file)}"]
        if self.trace is not None and trace:
            cmd += self.trace.qemu_args()
        return cmd + self.extra_args

    # Lifecycle hooks, as QEMU's QEMUMachine: launch() = _pre_launch -> _launch ->
    # _post_launch; shutdown() = _soft_shutdown (unless hard) -> _hard_shutdown, and always
    # _post_shutdown.  Another launcher (kvmlab.vm.libvirt_lab) overrides the hooks and hands
    # its console and backend over through _attach(); it never rewrites this class's state.
    tmpdir_mode = 0o700

    def launch(self) -> None:
        """Start QEMU and connect QMP.  On any failure nothing is left running.

        :raise LaunchError: QEMU exited or did not connect (with its exit code and output).
        """
        if self._launched:
            raise StateError("machine already launched")
        self._launched = True
        try:
            self._pre_launch()
            self._launch()
            self._post_launch()
        except _ResumeFailed as err:
            # a saved boot that does not resume (damaged, or from another QEMU): it goes,
            # and this VM boots (the next VM of its shape saves it again)
            log.warning("%s; booting instead", err)
            err.state.unlink(missing_ok=True)
            self.shutdown(hard=True)
            self.saved_boot, self.resumed_from, self._launched = False, None, False
            self.launch()
        except BaseException as err:
            output = self._stderr_text()
            code = self._proc.poll() if self._proc else None
            self.shutdown(hard=True)
            if isinstance(err, LaunchError):
                raise LaunchError(str(err.args[0]), exitcode=code, command=self.command,
                                  output=output) from err
            raise

    def trace_source(self) -> tuple[Path, int] | None:
        """Where this VM's trace events go: (file, byte offset its lines start at)."""
        return (self.trace.path, 0) if self.trace is not None else None

    def _resolve_accel(self) -> str:
        return resolve_accel(self.requested_accel, self.build, self.guest)

    def _pre_launch(self) -> None:
        """Choose the accelerator, make the private temp dir, write the manifest."""
        self._exit_seen = None                 # (the console drain's clock is per launch)
        self._accel_wanted = self._resolve_accel()
        if self.trace is not None:
            self.trace.create()
        self._tmpdir = str(owned_tmpdir(TMP_PREFIX, mode=self.tmpdir_mode))
        tmp = Path(self._tmpdir)
        self._manifest_file = self.manifest.write(tmp / "manifest") if self.manifest else None
        self._fio_file = self.fio.write(tmp / "job.fio") if self.fio else None

    def _launch(self) -> None:
        """Bind the QMP and serial sockets, start QEMU, take its serial connection."""
        assert self._tmpdir is not None
        tmp = Path(self._tmpdir)
        qmp_sock = tmp / "qmp.sock"
        self._qmp = QMPBackend.listen(qmp_sock)
        self._qmp.lost_reason = self._death_cause
        self.command = self._command(self._accel_wanted, qmp_sock, self._manifest_file)
        state = self._saved_state()
        if state is not None:
            self.command += ["-incoming", f"fd:{state}"]
        listener = _serial_listener(_serial_path(qmp_sock))
        try:
            errlog = open(tmp / "qemu.err", "wb")
            try:
                # (QEMU's stdout has only notices such as "Formatting '...'": not kept)
                self._proc = subprocess.Popen(
                    self._prefix() + self.command, stdout=subprocess.DEVNULL, stderr=errlog,
                    stdin=subprocess.DEVNULL, pass_fds=() if state is None else (state,),
                    start_new_session=True, env=self.build.env())
            finally:
                errlog.close()
                if state is not None:
                    os.close(state)
            self._finalizer = weakref.finalize(self, _reap, self._proc, self._tmpdir)
            self._serial = _accept_serial(listener, 30, self._exit_reason)
        finally:
            listener.close()
        self._stdin = self._serial.makefile("wb")
        self._serial_in = self._serial.makefile("rb")
        self._attach(Console(self._serial_in, self.console_log), self._qmp)

    def _prefix(self) -> list[str]:
        return [_proc.which("setpriv"), "--pdeathsig", "KILL", "--"] if self.die_with_parent \
            else []

    def _saved_state(self) -> int | None:
        """An fd of the boot saved for this VM's shape (saved now if there is none), or None:
        the VM boots (not TCG, extra arguments, turned off, or the save failed)."""
        wanted = saved.enabled() if self.saved_boot is None else self.saved_boot
        if not (wanted and self._accel_wanted == "tcg" and not self.extra_args):
            return None
        assert self._tmpdir is not None
        shape = self._command("tcg", Path(self._tmpdir) / "qmp.sock", self._manifest_file,
                              trace=False)
        key = saved.shape(shape, build=f"{self.qemu} {self.build.version}",
                          guest=self.guest.info)
        fd = saved.open_saved(key)
        if fd is None and key not in _UNSAVABLE:
            try:
                self._save(key)
            except (KvmlabError, OSError) as err:
                _UNSAVABLE.add(key)
                log.warning("booting %s: its boot could not be saved: %s", self.name, err)
            fd = saved.open_saved(key)
        if fd is not None:
            self.resumed_from = saved.path_of(key)
        return fd

    def _save(self, key: str) -> None:
        """Boot this VM's shape once with init stopping before any driver has seen a disk
        (``kvmlab.snap=1``) and save that moment as *key*'s state (QEMU's migration stream
        to a file).  That QEMU is gone when this returns, whatever happens."""
        assert self._tmpdir is not None
        sock = Path(self._tmpdir) / "saver.sock"
        qmp = QMPBackend.listen(sock)
        serial_listener: socket.socket | None = None
        serial: socket.socket | None = None
        serial_in: IO[bytes] | None = None
        cmd = self._command("tcg", sock, self._manifest_file, trace=False,
                            append=f"{self.kernel_cmdline()} {saved.SNAP_PARAM}")
        proc: subprocess.Popen[bytes] | None = None
        console: Console | None = None
        fd: int | None = None
        part: Path | None = None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def gone() -> str | None:
            code = proc.poll() if proc is not None else None
            return None if code is None else "the QEMU saving the boot " + exit_text(code)
        try:
            serial_listener = _serial_listener(_serial_path(sock))
            proc = subprocess.Popen(self._prefix() + cmd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, env=self.build.env())
            serial = _accept_serial(serial_listener, 30, gone)
            serial_in = serial.makefile("rb")
            console = Console(serial_in)
            qmp.accept(30, gone)
            console.records.wait(saved.SNAP_RECORD, timeout=self.boot_timeout, abort=gone)
            qmp.execute("stop")
            fd, part = saved.new_file(key)
            # the stream comes over a unix socket in our private dir into that file
            listener.bind(str(Path(self._tmpdir) / "save.sock"))
            listener.listen(1)
            listener.settimeout(30)
            qmp.execute("migrate", {"uri": f"unix:{Path(self._tmpdir) / 'save.sock'}"})
            conn, _ = listener.accept()
            with conn, open(fd, "wb", closefd=False) as out:
                conn.settimeout(60)
                shutil.copyfileobj(conn.makefile("rb"), out, 1 << 20)
            deadline = time.monotonic() + 30
            while (status := qmp.execute("query-migrate").get("status")) in \
                    ("setup", "active", "device", None):
                if time.monotonic() > deadline:
                    raise WaitTimeout("saving the booted guest took over 30 s")
                time.sleep(0.05)
            if status != "completed":
                raise LaunchError(f"saving the booted guest: migration {status}")
            os.close(fd)
            fd = None
            saved.publish(part, key)
            part = None
        finally:
            listener.close()
            qmp.close()
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
            if console is not None:
                console.join()
            for end in (serial_in, serial, serial_listener):
                if end is not None:
                    end.close()
            if fd is not None:
                os.close(fd)
            if part is not None:
                part.unlink(missing_ok=True)

    def _post_launch(self) -> None:
        """Accept QEMU's QMP connection; a resumed VM is continued and given its
        parameters (with a seed of its own) on the console."""
        assert self._qmp is not None
        try:
            self._qmp.accept(30, self._exit_reason)
        except LaunchError as err:            # QEMU refused the stream and exited
            if self.resumed_from is None:
                raise
            raise _ResumeFailed(self.resumed_from,
                                f"resuming {self.resumed_from.name}: {err}") from err
        self.accel = self._accel_wanted
        if self.resumed_from is not None:
            state = self.resumed_from
            deadline = time.monotonic() + 60
            try:
                while (status := self._qmp.execute("query-migrate").get("status")) \
                        != "completed":
                    if status == "failed" or time.monotonic() > deadline:
                        raise _ResumeFailed(state, f"resuming {state.name}: {status}")
                    time.sleep(0.02)
            except BackendError as err:           # QEMU refused the stream and exited
                raise _ResumeFailed(state, f"resuming {state.name}: {err}") from err
            self._qmp.execute("cont")
            assert self._stdin is not None
            try:
                self._stdin.write(f"{self.kernel_cmdline()} {saved.seed_param()}\n".encode())
                self._stdin.flush()
            except OSError as err:                # QEMU died after cont: boot instead
                raise _ResumeFailed(state, f"resuming {state.name}: {err}") from err

    def _attach(self, console: Console, backend: Backend) -> None:
        """The launched VM's serial console and backend (for launcher hooks)."""
        self._console = console
        self._backend = backend

    def _exit_reason(self) -> str | None:
        """How QEMU ended, with what the guest last said, or None while it runs.  A
        console that closed means QEMU is ending: its exit is waited for up to 1 s."""
        if self._proc is None:
            return None
        code = self._proc.poll()
        if code is None and self._console is not None and self._console.records.closed:
            try:
                code = self._proc.wait(1.0)
            except subprocess.TimeoutExpired:
                return None
        if code is None:
            return None
        if self._console is not None and not self._console.records.closed:
            # QEMU is gone but its last console lines (a verify guest's verdict, written
            # just before it powered off) may still be on their way to the reader: give
            # it up to CONSOLE_DRAIN_S to reach the end of the stream, so that a wait
            # finds them before it gives up
            self._exit_seen = self._exit_seen or time.monotonic()
            if time.monotonic() - self._exit_seen < CONSOLE_DRAIN_S:
                return None
        return exit_text(code) + self._console_tail()

    def _console_tail(self, lines: int = 3) -> str:
        if self._console is None:
            return ""
        said = [text.strip() for _, text in self._console.lines[-50:] if text.strip()]
        booted = any(r.name == "boot" for r in self._console.records.snapshot())
        tail = " | ".join(t[:160] for t in said[-lines:])
        return (("" if booted else "; the guest never booted") +
                (f"; last console lines: {tail}" if tail else "; the console is empty"))

    def _guest_failed(self, names: tuple[str, ...]) -> Callable[[], str | None]:
        """The abort check of a wait on the console: a ``KVMLAB error=...`` line from the
        guest ends it at once with that error (except a wait for a verdict: a verify
        guest that cannot mount reports its failed verdict next), as does QEMU's exit."""
        def check() -> str | None:
            if "verdict" not in names and self._console is not None:
                for r in self._console.records.snapshot():
                    if r.name == "error":
                        said = " ".join(f"{k}={v}" for k, v in r.data.items() if k != "t")
                        raise GuestFailed(f"the guest failed: {said}")
            return self._exit_reason()
        return check

    def _death_cause(self) -> str | None:
        """Why the monitor went away: QEMU's exit with its last stderr line (:meth:`died`;
        waited for up to 1 s, as the socket closes a moment before the process is reaped),
        else None."""
        if self._proc is None:
            return None
        try:
            self._proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return "QMP connection lost while QEMU still runs"
        return self.died()

    def died(self) -> str | None:
        """If QEMU was launched and has exited: how, with the last line it wrote to stderr
        (an assertion, say), as one line; else None."""
        if self._proc is None or self._proc.poll() is None:
            return None
        last = next((ln.strip() for ln in reversed(self._stderr_text().splitlines())
                     if ln.strip()), "")
        return exit_text(self._proc.returncode) + (f" ({last})" if last else "")

    def _stderr_text(self) -> str:
        if self._tmpdir and (Path(self._tmpdir) / "qemu.err").exists():
            return strip_stamps((Path(self._tmpdir) / "qemu.err").read_text(errors="replace"))
        return ""

    def shutdown(self, timeout: float = 10, hard: bool = False) -> None:
        """Stop the VM (QMP ``quit``, then SIGKILL) and remove everything it used.  Idempotent."""
        try:
            if self.running:
                if not hard:
                    try:
                        self._soft_shutdown(timeout)
                    except Exception:  # noqa: BLE001 - fall through to the hard way
                        log.debug("soft shutdown failed", exc_info=True)
                if self.running:
                    self._hard_shutdown()
        finally:
            self._post_shutdown()

    def _soft_shutdown(self, timeout: float) -> None:
        """QMP ``quit`` and wait for QEMU to exit."""
        assert self._proc is not None
        if self._qmp is not None:
            self._qmp.execute("quit", timeout=timeout)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def _hard_shutdown(self) -> None:
        """SIGKILL QEMU and reap it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def _post_shutdown(self) -> None:
        """Close the backend, agent and console; remove the temp dir.  Always runs."""
        if self._proc is not None:
            self.exitcode = self._proc.poll()
        if self._backend is not None:
            self._backend.close()
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        if self._console is not None:
            self._console.join()
        for end in (self._stdin, self._serial_in, self._serial):
            if end is not None:
                try:
                    end.close()
                except OSError:             # QEMU gone: the buffer had no reader
                    pass
        self._stdin = self._serial_in = self._serial = None
        if self._qmp is not None and self._qmp is not self._backend:
            self._qmp.close()               # launched no further than its listening socket
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        if self._finalizer is not None:
            self._finalizer.detach()
        self._tmpdir = None
        self._finalizer = None

    def agent(self, timeout: float = 60) -> GuestAgent:
        """The guest agent, connected (launch with ``agent=True``)."""
        if not self.with_agent:
            raise StateError("this machine was launched without the guest agent (agent=True)")
        if self._agent is None:
            if self._tmpdir is None:
                raise StateError("machine is not running: call launch() first")
            ga = GuestAgent(Path(self._tmpdir) / "qga.sock")
            try:
                ga.connect(timeout)
            except BaseException:
                ga.close()
                raise
            self._agent = ga
        return self._agent

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig* to QEMU (tests use it to check cleanup after QEMU dies)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for QEMU to exit by itself (the verify guest powers off)."""
        if self._proc is None:
            raise StateError("machine was not launched")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired as err:
            raise WaitTimeout(f"QEMU did not exit within {timeout:.0f} s") from err

    # -- guest ---------------------------------------------------------------------
    def wait_guest(self, name: str, match: Mapping[str, Any] | None = None, *,
                   timeout: float | None = None, since: int = 0) -> Record:
        """Wait for a console record from the guest (``ready``, ``op``, ``verdict``...)."""
        return self.console.records.wait(name, match, since=since,
                                         timeout=timeout or self.boot_timeout,
                                         abort=self._guest_failed((name,)))

    def guest_ops(self, since: float | None = None, until: float | None = None) -> list[Record]:
        """The guest's operation records, optionally those that arrived in [since, until)."""
        return [r for r in self.console.records.snapshot() if r.name == "op"
                and (since is None or r.mono >= since) and (until is None or r.mono < until)]

    def wait_ops(self, count: int, op: str | None = "dd", *, after: float | None = None,
                 timeout: float = 120) -> list[Record]:
        """Wait until *count* operations (of kind *op*) have arrived after time *after*."""
        after = time.monotonic() if after is None else after
        deadline = time.monotonic() + timeout
        while True:
            seen = len(self.console.records)
            got = [r for r in self.guest_ops(since=after) if op is None or r.data.get("op") == op]
            if len(got) >= count:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"guest made {len(got)} of {count} {op or ''} operations "
                                  f"in {timeout:.0f} s")
            try:
                self.console.records.wait("op", since=seen, timeout=min(left, 5),
                                          abort=self._guest_failed(("op",)))
            except WaitTimeout:
                if self._exit_reason():
                    raise

    # -- convenience: the seed's verbs, delegated to the job API --------------------
    def hmp(self, command_line: str, check: bool = True) -> str:
        """The seed's HMP command lines, verbatim (see :func:`kvmlab.live.jobs.hmp`)."""
        return jobs.hmp(self.backend, command_line, check=check)

    def mirror(self, device: str, target: str | Path, format: str | None = None,
               **kwargs: Any) -> jobs.Job:
        """Start a drive-mirror (keyword arguments as :class:`~kvmlab.model.MirrorSpec`)."""
        return jobs.mirror(self.backend, MirrorSpec(device, str(target), format, **kwargs),
                           caps=qemu_probe.capabilities(self.build))

    def commit(self, device: str = "drive0", **kwargs: Any) -> jobs.Job:
        """Start QMP ``block-commit`` (see :func:`kvmlab.live.jobs.commit`)."""
        return jobs.commit(self.backend, device, **kwargs)

    def backup(self, device: str, target: str | Path, job_id: str = "backup0",
               speed: int = 0) -> jobs.Job:
        """Start QMP ``blockdev-backup sync=full`` into the raw file *target* (see
        :func:`kvmlab.live.jobs.backup`): a copy of the disk as it was at the job's start."""
        return jobs.backup(self.backend, device, target, job_id=job_id, speed=speed)

    def snapshot(self, device: str, overlay: str | Path) -> None:
        """QMP ``blockdev-snapshot-sync``: writes go to the new qcow2 *overlay* from now on,
        and the image below stays as it was."""
        if Path(overlay).exists():
            raise BadInput(f"overlay {overlay} already exists")
        self.backend.snapshot(device, str(overlay))

    def stop(self) -> None:
        self.backend.stop()

    def cont(self) -> None:
        self.backend.cont()

    def block_info(self) -> list[DriveInfo]:
        return self.backend.block_info()

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """A raw QMP command on the embedded lab's own connection (QEMU's refusal is
        :class:`~kvmlab.errors.BackendError` with QEMU's words)."""
        if self._qmp is None:
            raise StateError("raw QMP needs a VM kvmlab launched itself (the qmp backend)")
        return self._qmp.execute(command, arguments)


# -- accelerator detection ------------------------------------------------------------
_ACCEL_CACHE: dict[str, str] = {}


def _accel_key(qemu: QemuBuild, guest: Guest) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "?"
    return "|".join([boot_id, os.uname().release, str(qemu.emulator), guest.kernel_version])


def resolve_accel(accel: str, qemu: str | Path | QemuBuild | None = None,
                  guest: Guest | None = None, probe_timeout: float = 15) -> str:
    """The accelerator to use: ``auto`` boots a probe guest under KVM and falls back to TCG.

    /dev/kvm existing is not enough (a nested guest can hang with no output),
    so the probe must see the guest's first console line.  The answer is
    cached in memory and in ``data/guest/accel.json`` per host boot.
    """
    if accel != "auto":
        return accel
    env = os.environ.get("KVMLAB_ACCEL")
    if env in ("kvm", "tcg"):
        return env
    guest = guest or load_guest()
    build = builds.resolve(qemu)
    key = _accel_key(build, guest)
    if key in _ACCEL_CACHE:
        return _ACCEL_CACHE[key]
    cache_file = paths.guest_dir() / "accel.json"
    entries: dict[str, Any] = {}
    try:
        cached = json.loads(trust.read_owned(cache_file))    # another user's: not trusted
        entries = {k: v for k, v in cached.get("entries", {}).items()
                   if k.split("|")[0] == key.split("|")[0]}     # this boot's, one per build
        if entries.get(key, {}).get("accel") in ("kvm", "tcg"):
            _ACCEL_CACHE[key] = entries[key]["accel"]
            return str(entries[key]["accel"])
    except (OSError, ValueError, AttributeError, Untrusted):
        pass
    result = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        probe = Machine(None, accel="kvm", guest=guest, qemu=build, name="kvmlab-accel-probe")
        try:
            probe.launch()
            probe.wait_guest("boot", timeout=probe_timeout)
            result = "kvm"
        except (LaunchError, WaitTimeout) as err:
            log.info("KVM probe failed (%s); using TCG", err)
        finally:
            probe.shutdown(hard=True)
    _ACCEL_CACHE[key] = result
    try:
        entries[key] = {"accel": result, "probed": time.time()}
        trust.write_atomic(cache_file, json.dumps({"entries": entries}, indent=1) + "\n")
    except OSError:
        pass
    return result
