"""libvirt backend (libvirt-python): the same job interface on libvirt-managed domains.

Mapping (the virsh verbs engineers know):

==================  =====================================================================
kvmlab              libvirt
==================  =====================================================================
mirror              ``virDomain.blockCopy`` (bandwidth, granularity, buf-size; shallow,
                    reuse-external, transient-job, synchronous-writes flags)
info / samples      ``virDomain.blockJobInfo`` (+ QEMU's ``query-block-jobs`` through the
                    monitor for status, ready, paused, busy, io-status)
cancel / complete   ``virDomain.blockJobAbort`` (``VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT``)
set_speed           ``virDomain.blockJobSetSpeed`` (bytes/s)
commit              ``virDomain.blockCommit`` (active commit + pivot)
stop / cont         ``virDomain.suspend`` / ``virDomain.resume``
hmp                 ``libvirt_qemu.qemuMonitorCommand`` with the HMP flag
events              ``libvirt_qemu.qemuMonitorEventRegister`` (the raw QMP events) and
                    ``VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2``
==================  =====================================================================

Names: libvirt addresses disks by target (``vda``); QEMU (``-blockdev``) knows them by
node names (``libvirt-1-format``) and libvirt's block jobs by ids like
``copy-vda-libvirt-1-format``.  kvmlab names every job by its disk target, rewrites the
``device``/``id`` of QEMU's job events to it, and in HMP command lines replaces a disk
target (or ``drive0``, the seed's name, for the first disk) by the node name or job id
QEMU expects -- so ``drive_mirror -f vda /x.img`` and ``block_job_cancel vda`` work.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kvmlab import marks
from kvmlab.errors import BackendError, BadInput, StateError
from kvmlab.events import Record, RecordLog
from kvmlab.model import DriveInfo, JobInfo, MirrorSpec

log = logging.getLogger(__name__)

try:  # libvirt-python is an optional extra
    import libvirt
    import libvirt_qemu
except ImportError:  # pragma: no cover - reported when the backend is used
    libvirt = None
    libvirt_qemu = None

_loop_lock = threading.Lock()
_loop_started = False
#: how long a pivot libvirt says is "not ready" yet is asked again (seconds)
PIVOT_WAIT_S = 10.0


def _ensure_event_loop() -> None:
    """libvirt's default event loop, run in a daemon thread (never in a Jupyter kernel's loop)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="kvmlab-libvirt-events", daemon=True).start()
        _loop_started = True


def require_libvirt() -> None:
    if libvirt is None:
        raise BackendError("the libvirt backend needs libvirt-python (pip install 'kvmlab[libvirt]')")


class LibvirtBackend:
    """A running libvirt domain, by URI and name or UUID.

    :raise BackendError: the URI cannot be reached.
    :raise BadInput: no such domain, or it is not running.
    """

    name = "libvirt"

    def __init__(self, uri: str = "qemu:///system", domain: str = "") -> None:
        require_libvirt()
        if not domain:
            raise BadInput("a libvirt domain name or UUID is needed")
        _ensure_event_loop()
        libvirt.registerErrorHandler(lambda *_: None, None)  # errors come as exceptions
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as err:
            raise BackendError(f"cannot connect to {uri}: {_msg(err)}") from err
        self.uri = uri
        try:
            try:
                self.dom = self.conn.lookupByName(domain)
            except libvirt.libvirtError:
                try:
                    self.dom = self.conn.lookupByUUIDString(domain)
                except libvirt.libvirtError:
                    raise BadInput(f"no domain {domain!r} at {uri}") from None
            if not self.dom.isActive():
                raise BadInput(f"domain {self.dom.name()!r} is not running")
        except BaseException:
            self.conn.close()
            raise
        self.events = RecordLog()
        self._callbacks: list[int] = []
        self._qmp_cb = libvirt_qemu.qemuMonitorEventRegister(
            self.conn, self.dom, None, self._on_qmp_event, None, 0)
        self._bj_cb = self.conn.domainEventRegisterAny(
            self.dom, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_block_job, None)
        self._closed = False

    # -- names ---------------------------------------------------------------------
    def disks(self) -> list[str]:
        """Disk targets of the domain (``vda``...)."""
        return [d.device for d in self.block_info()]

    def disk(self, name: str) -> str:
        """A disk target from a target name, the seed's ``drive0`` (first disk), or a path."""
        infos = self.block_info()
        for d in infos:
            if name in (d.device, d.file):
                return d.device
        if name == "drive0" and infos:
            return infos[0].device
        raise BadInput(f"unknown disk {name!r} (disks: {', '.join(d.device for d in infos)})")

    def node_name(self, disk: str) -> str:
        """QEMU's root node name for a disk target (what HMP ``drive_mirror`` takes)."""
        for d in self.qmp("query-block"):
            qdev = str(d.get("qdev", ""))
            ins = d.get("inserted") or {}
            if f"virtio-{disk}" in qdev or qdev.endswith(f"/{disk}/virtio-backend") or \
                    qdev == f"ua-{disk}" or ins.get("file") == self._disk_file(disk):
                return str(ins.get("node-name"))
        raise BadInput(f"no QEMU node for disk {disk}")

    def _disk_file(self, disk: str) -> str | None:
        for d in self.block_info():
            if d.device == disk:
                return d.file
        return None

    def _job_disk(self, qemu_id: str, targets: list[str] | None = None) -> str:
        """kvmlab's name (disk target) for a QEMU job id of this domain (*targets*: the
        domain's disk targets, when the caller has just read them)."""
        targets = self._targets() if targets is None else targets
        m = re.match(r"^(?:copy|commit|pull|backup)-([a-z]+\d*|[a-z]+)-", qemu_id)
        if m and m.group(1) in targets:
            return m.group(1)
        for disk in targets:
            try:
                if self.node_name(disk) == qemu_id:
                    return disk
            except BadInput:
                continue
        return qemu_id

    def _targets(self) -> list[str]:
        root = ET.fromstring(self._call("XMLDesc", self.dom.XMLDesc, 0))
        return [t.get("dev", "") for t in root.findall("./devices/disk/target")]

    # -- events --------------------------------------------------------------------
    def _on_qmp_event(self, conn: Any, dom: Any, event: str, seconds: int, micros: int,
                      details: Any, opaque: Any) -> None:
        if isinstance(details, str):  # libvirt passes the event's data as JSON text
            try:
                details = json.loads(details)
            except ValueError:
                details = {"raw": details}
        data = dict(details or {})
        for key in ("device", "id"):
            if isinstance(data.get(key), str):
                data["qemu_job"] = data[key]
                try:
                    data[key] = self._job_disk(data[key])
                except BackendError:    # the domain went away under us: keep QEMU's name
                    pass
        self.events.append(Record(event, data, source=seconds + micros / 1e6))

    def _on_block_job(self, conn: Any, dom: Any, disk: str, typ: int, status: int,
                      opaque: Any) -> None:
        self.events.append(Record("libvirt:BLOCK_JOB_2", {"disk": disk, "type": typ,
                                                          "status": status}))

    # -- raw channels --------------------------------------------------------------
    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """A QMP command through libvirt's monitor passthrough."""
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        try:
            reply = libvirt_qemu.qemuMonitorCommand(self.dom, json.dumps(msg), 0)
        except libvirt.libvirtError as err:
            raise BackendError(f"{command}: {_msg(err)}", command=msg) from err
        out = json.loads(reply)
        if "error" in out:
            raise BackendError(f"{command}: {out['error'].get('desc')}", command=msg, reply=out)
        return out.get("return")

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise StateError(f"libvirt connection closed; cannot {what}")
        try:
            return fn(*args)
        except libvirt.libvirtError as err:
            raise BackendError(f"{what}: {_msg(err)}") from err

    # -- Backend protocol ------------------------------------------------------------
    def block_info(self) -> list[DriveInfo]:
        root = ET.fromstring(self._call("XMLDesc", self.dom.XMLDesc, 0))
        out = []
        for disk in root.findall("./devices/disk"):
            if disk.get("device", "disk") != "disk":
                continue
            target = disk.find("target")
            src = disk.find("source")
            drv = disk.find("driver")
            chain: list[str] = []
            bs = disk.find("backingStore")
            while bs is not None and bs.find("source") is not None:
                chain.append(str(bs.find("source").get("file")))  # type: ignore[union-attr]
                bs = bs.find("backingStore")
            out.append(DriveInfo(device=target.get("dev", "") if target is not None else "",
                                 file=src.get("file") if src is not None else None,
                                 format=drv.get("type") if drv is not None else None,
                                 backing_chain=tuple(chain),
                                 read_only=disk.find("readonly") is not None))
        return out

    def block_jobs(self) -> list[JobInfo]:
        """Every block job: QEMU's ``query-block-jobs`` through the monitor, named by disk
        target, and ``blockJobInfo`` for a disk only when QEMU did not report it (each
        call is a round trip through libvirtd: one sample reads the domain XML once)."""
        targets = self._targets()
        details = {}
        try:
            for j in self.qmp("query-block-jobs"):
                details[self._job_disk(str(j["device"]), targets)] = j
        except BackendError:
            pass
        out = []
        for disk in targets:
            q = details.pop(disk, None)
            if q is not None:
                out.append(JobInfo.from_qmp(dict(q, device=disk)))
                continue
            info = self._call("blockJobInfo", self.dom.blockJobInfo, disk, 0)
            if info:
                out.append(JobInfo(id=disk, type=_JOB_TYPES.get(info.get("type", 0), "unknown"),
                                   len=int(info.get("end", 0)), offset=int(info.get("cur", 0)),
                                   speed=int(info.get("bandwidth", 0)), busy=False,
                                   paused=False, ready=info.get("cur") == info.get("end"),
                                   status="running", io_status="ok"))
        for qemu_id, q in details.items():  # jobs libvirt does not know (HMP drive_mirror)
            out.append(JobInfo.from_qmp(dict(q, device=qemu_id)))
        return out

    def start_mirror(self, spec: MirrorSpec) -> str:
        disk = self.disk(spec.device)
        if spec.sync == "none":
            raise BadInput("sync='none' has no libvirt blockCopy equivalent")
        if spec.on_source_error != "report" or spec.on_target_error != "report":
            raise BadInput("libvirt blockCopy does not take on-source-error/on-target-error")
        fmt = spec.format or next((d.format for d in self.block_info() if d.device == disk),
                                  None) or "raw"
        dest = copy_destination(spec.target, fmt)
        params: dict[str, int] = {}
        if spec.speed:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = spec.speed
        if spec.granularity:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_GRANULARITY] = spec.granularity
        if spec.buf_size:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BUF_SIZE] = spec.buf_size
        flags = 0
        if spec.sync == "top":
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
        if spec.mode == "existing":
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
        if self.dom.isPersistent():
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        if spec.copy_mode == "write-blocking":
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES
        self._call("blockCopy", self.dom.blockCopy, disk, ET.tostring(dest, encoding="unicode"),
                   params, flags)
        return disk

    def start_commit(self, device: str, *, top: str | None = None, base: str | None = None,
                     speed: int = 0, job_id: str | None = None) -> str:
        disk = self.disk(device)
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES
        if top is None:
            flags |= libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
        self._call("blockCommit", self.dom.blockCommit, disk, base, top, speed, flags)
        return disk

    def start_backup(self, device: str, target: str, *, job_id: str, speed: int = 0) -> str:
        raise BackendError("blockdev-backup is not wired through libvirt here (libvirt's own "
                           "backup API needs a backup XML); use backend='qmp'")

    def drop_backup_target(self, job_id: str) -> None:
        raise BackendError("blockdev-backup is not wired through libvirt here; use backend='qmp'")

    def snapshot(self, device: str, overlay: str) -> None:
        raise BackendError("external snapshots are not wired through libvirt here (libvirt "
                           "keeps its own snapshot metadata); use backend='qmp'")

    def _qemu_job_id(self, job_id: str) -> str:
        for j in self.qmp("query-block-jobs"):
            if self._job_disk(str(j["device"])) == job_id or j["device"] == job_id:
                return str(j["device"])
        raise BackendError(f"no block job {job_id!r}")

    def job_cancel(self, job_id: str, force: bool = False) -> None:
        if job_id in self._targets():
            self._call("blockJobAbort", self.dom.blockJobAbort, job_id, 0)
        else:
            self.qmp("block-job-cancel", {"device": self._qemu_job_id(job_id), "force": force})

    def job_complete(self, job_id: str) -> None:
        if job_id in self._targets():
            # libvirt takes in QEMU's READY a moment after the event has come: until then
            # it refuses the pivot ("not ready for pivot yet"), so that is asked again
            deadline = time.monotonic() + PIVOT_WAIT_S
            while True:
                try:
                    self._call("blockJobAbort(pivot)", self.dom.blockJobAbort, job_id,
                               libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    return
                except BackendError as err:
                    if "not ready for pivot" not in str(err) or time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        else:
            self.qmp("block-job-complete", {"device": self._qemu_job_id(job_id)})

    def job_pause(self, job_id: str) -> None:
        self.qmp("block-job-pause", {"device": self._qemu_job_id(job_id)})

    def job_resume(self, job_id: str) -> None:
        self.qmp("block-job-resume", {"device": self._qemu_job_id(job_id)})

    def job_set_speed(self, job_id: str, speed: int) -> None:
        if job_id in self._targets():
            self._call("blockJobSetSpeed", self.dom.blockJobSetSpeed, job_id, speed,
                       libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES)
        else:
            self.qmp("block-job-set-speed", {"device": self._qemu_job_id(job_id),
                                              "speed": speed})

    def job_change(self, job_id: str, copy_mode: str) -> None:
        """libvirt has no call for ``block-job-change``: it goes through the monitor
        (libvirt does not track a job's copy mode, so nothing of its state goes stale)."""
        self.qmp("block-job-change", {"id": self._qemu_job_id(job_id), "type": "mirror",
                                      "copy-mode": copy_mode})

    def stop(self) -> None:
        self._call("suspend", self.dom.suspend)

    def cont(self) -> None:
        self._call("resume", self.dom.resume)

    def run_state(self) -> str:
        state, _ = self._call("state", self.dom.state)
        return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                libvirt.VIR_DOMAIN_SHUTOFF: "shutdown"}.get(state, f"state-{state}")

    def hmp(self, command_line: str) -> str:
        """HMP verbatim, with disk targets (or ``drive0``) swapped for QEMU's names.

        ``drive_mirror`` and ``commit`` cannot name a libvirt (``-blockdev``) disk in
        QEMU 7.2 (``Invalid job ID ''`` / ``Device not found``), so kvmlab carries them
        out as the libvirt calls (blockCopy; blockCommit + pivot, synchronous like HMP's
        commit) and answers as HMP does (empty text); ``block_job_complete`` and
        ``block_job_cancel`` of a job libvirt runs go through blockJobAbort, so libvirt
        sees the pivot.  Every other command goes to QEMU's monitor.
        """
        words = command_line.split()
        if words and words[0] == "drive_mirror":
            return self._hmp_drive_mirror(words[1:])
        if words and words[0] == "commit" and len(words) == 2:
            return self._hmp_commit(words[1])
        if len(words) == 2 and words[0] in ("block_job_complete", "block_job_cancel"):
            disk = self._libvirt_job_disk(words[1])
            if disk is not None:  # libvirt's own job: through libvirt, so it sees the pivot
                try:
                    if words[0] == "block_job_complete":
                        self.job_complete(disk)
                    else:
                        self.job_cancel(disk)
                except BackendError as err:
                    return f"Error: {err}"
                return ""
        line = self._translate_hmp(command_line)
        try:
            return str(libvirt_qemu.qemuMonitorCommand(
                self.dom, line, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
        except libvirt.libvirtError as err:
            raise BackendError(f"HMP {line.split()[0]}: {_msg(err)}", command=line) from err

    def _libvirt_job_disk(self, name: str) -> str | None:
        """The disk target whose block job libvirt runs, if *name* names one."""
        try:
            disk = self.disk(name)
        except BadInput:
            return None
        info = self._call("blockJobInfo", self.dom.blockJobInfo, disk, 0)
        return disk if info else None

    def _hmp_drive_mirror(self, args: list[str]) -> str:
        flags = {a for a in args if a.startswith("-")}
        rest = [a for a in args if not a.startswith("-")]
        unknown = flags - {"-n", "-f"}
        if unknown or len(rest) not in (2, 3):
            return "Error: usage: drive_mirror [-n] [-f] device target [format]"
        spec = MirrorSpec(rest[0], rest[1], rest[2] if len(rest) == 3 else None,
                          sync="full" if "-f" in flags else "top",
                          mode="existing" if "-n" in flags else "absolute-paths")
        try:
            self.start_mirror(spec)
        except (BackendError, BadInput) as err:
            return f"Error: {err}"
        return ""

    def _hmp_commit(self, device: str) -> str:
        """HMP ``commit`` done as libvirt active commit + pivot, waiting for the end."""
        try:
            disk = self.disk(device)
            since = len(self.events)
            self.start_commit(disk)
            self.events.wait(marks.BLOCK_JOB_READY, {"device": disk}, since=since, timeout=600)
            self.job_complete(disk)
            end = self.events.wait(marks.JOB_ENDED,
                                   {"device": disk}, since=since, timeout=600)
        except (BackendError, BadInput) as err:
            return f"Error: {err}"
        err_text = end.data.get("error")
        return f"Error: {err_text}" if err_text else ""

    def _translate_hmp(self, line: str) -> str:
        words = line.split()
        if not words:
            return line
        verb = words[0]
        targets = self._targets()
        names = {t: t for t in targets}
        if targets:
            names.setdefault("drive0", targets[0])
        out = list(words)
        for i, w in enumerate(words[1:], start=1):
            if w not in names:
                continue
            disk = names[w]
            if verb in ("drive_mirror", "drive_backup", "block_stream"):
                out[i] = self.node_name(disk)
            elif verb.startswith("block_job_"):
                try:
                    out[i] = self._qemu_job_id(disk)
                except BackendError:
                    out[i] = self.node_name(disk)
            break
        return " ".join(out)

    def versions(self) -> dict[str, str]:
        v = self._call("getVersion", self.conn.getVersion)
        lv = self._call("getLibVersion", self.conn.getLibVersion)
        return {"qemu": f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}",
                "libvirt": f"{lv // 1000000}.{lv // 1000 % 1000}.{lv % 1000}"}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fn in (lambda: libvirt_qemu.qemuMonitorEventDeregister(self.conn, self._qmp_cb),
                   lambda: self.conn.domainEventDeregisterAny(self._bj_cb)):
            try:
                fn()
            except Exception:  # noqa: BLE001 - the domain may be gone
                pass
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        self.events.close()


# libvirt's job types, named as QEMU's query-block-jobs names them (same columns either way)
_JOB_TYPES = {1: "stream", 2: "mirror", 3: "commit", 4: "commit", 5: "backup"}


def _msg(err: Any) -> str:
    text = str(err.get_error_message() if hasattr(err, "get_error_message") else err)
    return text.strip().splitlines()[0] if text.strip() else "libvirt error"


def copy_destination(target: str, fmt: str) -> ET.Element:
    """blockCopy's destination ``<disk>``: a file, or an NBD export given as QEMU's URL
    (``nbd+unix:///<export>?socket=<path>``, ``nbd://<host>:<port>/<export>``): a
    ``type='network'`` disk, as libvirt writes one for its own storage migration."""
    if not target.startswith(("nbd:", "nbd+unix:")):
        dest = ET.Element("disk", type="file")
        ET.SubElement(dest, "source", file=target)
        ET.SubElement(dest, "driver", type=fmt)
        return dest
    url = urlsplit(target)
    export = url.path.lstrip("/")
    dest = ET.Element("disk", type="network")
    ET.SubElement(dest, "driver", type=fmt)
    src = ET.SubElement(dest, "source", protocol="nbd")
    if export:
        src.set("name", export)
    if url.scheme == "nbd+unix":
        socket = parse_qs(url.query).get("socket", [""])[0]
        if not socket:
            raise BadInput(f"{target!r}: an nbd+unix URL needs ?socket=<path>")
        ET.SubElement(src, "host", transport="unix", socket=socket)
    else:
        if not url.hostname or not url.port:
            raise BadInput(f"{target!r}: an nbd URL needs a host and a port")
        ET.SubElement(src, "host", name=url.hostname, port=str(url.port))
    return dest
