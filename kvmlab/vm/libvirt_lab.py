"""A lab VM as a transient libvirt domain (TCG), for the libvirt backend's tests and demos.

Same guest, same modes and the same :class:`~kvmlab.vm.machine.Machine` interface as
the embedded lab; only the launcher differs: ``virDomainCreateXML`` of a transient
``type='qemu'`` domain, the serial console on a unix socket kvmlab reads, the
verify manifest through ``<sysinfo type='fwcfg'>``.  ``shutdown`` destroys the
domain; a transient domain leaves no definition behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from kvmlab import _proc
from kvmlab.backends.libvirt import LibvirtBackend, require_libvirt
from kvmlab.errors import BackendError, BadInput, LaunchError, WaitTimeout
from kvmlab.guest.console import Console
from kvmlab.qemu import images
from kvmlab.store.tmpdirs import own
from kvmlab.vm.machine import Machine, guest_dev

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"


class LibvirtMachine(Machine):
    """A :class:`Machine` run by libvirtd as a transient domain.  Disks are ``vda``, ``vdb``...

    :param uri: the libvirt connection URI.
    """

    def __init__(self, *args: Any, uri: str = DEFAULT_URI, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uri = uri
        if self.tools is not None:
            raise BadInput("the guest's tools disk (fio workloads) is an option of the "
                           "embedded lab (qmp backend)")
        if any(d.iothread for d in self.drives):
            raise BadInput("a disk's own iothread is an option of the embedded lab (qmp backend)")
        self.drives = [dataclasses.replace(d, id=guest_dev(i)) for i, d in enumerate(self.drives)]
        self.domain_name = f"{self.name}-{secrets.token_hex(3)}"
        self._dom: Any = None
        self._sock: socket.socket | None = None

    @property
    def running(self) -> bool:
        try:
            return bool(self._dom is not None and self._dom.isActive())
        except Exception:  # noqa: BLE001 - a destroyed transient domain is gone
            return False

    @property
    def pid(self) -> int | None:
        return None

    def domain_xml(self, manifest_file: Path | None, console_sock: Path) -> str:
        dom = ET.Element("domain", type="qemu")
        ET.SubElement(dom, "name").text = self.domain_name
        ET.SubElement(dom, "memory", unit="MiB").text = str(self.memory_mib)
        ET.SubElement(dom, "vcpu").text = "1"
        os_ = ET.SubElement(dom, "os")
        ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
        ET.SubElement(os_, "kernel").text = str(self.guest.kernel)
        ET.SubElement(os_, "initrd").text = str(self.guest.initrd)
        ET.SubElement(os_, "cmdline").text = self.kernel_cmdline()
        feats = ET.SubElement(dom, "features")
        ET.SubElement(feats, "acpi")  # the verify guest powers off through ACPI
        if manifest_file is not None:
            si = ET.SubElement(dom, "sysinfo", type="fwcfg")
            ET.SubElement(si, "entry", name="opt/kvmlab/manifest", file=str(manifest_file))
        for ev in ("on_poweroff", "on_reboot", "on_crash"):
            ET.SubElement(dom, ev).text = "destroy"
        dev = ET.SubElement(dom, "devices")
        ET.SubElement(dev, "emulator").text = str(self.build.libvirt_emulator())
        for d in self.drives:
            disk = ET.SubElement(dev, "disk", type="file", device="disk")
            fmt = d.format or images.info(d.path)["format"]
            ET.SubElement(disk, "driver", name="qemu", type=fmt, cache=d.cache)
            ET.SubElement(disk, "source", file=str(d.path))
            ET.SubElement(disk, "target", dev=d.id, bus="virtio")
            if d.read_only:
                ET.SubElement(disk, "readonly")
        serial = ET.SubElement(dev, "serial", type="unix")
        ET.SubElement(serial, "source", mode="bind", path=str(console_sock))
        ET.SubElement(serial, "target", port="0")
        ET.SubElement(dev, "memballoon", model="none")
        if self.trace is not None:
            # libvirt has no element for trace events: QEMU's own arguments, through
            # libvirt's qemu namespace (its QEMU writes the trace file as ours does)
            cmdline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
            for arg in self.trace.qemu_args():
                ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
        return ET.tostring(dom, encoding="unicode")

    # QEMUMachine-style hooks (see Machine): the embedded lab's launch and shutdown, with
    # libvirtd starting and destroying QEMU.  The temp dir is 0700 like the VM's; when
    # libvirt runs QEMU as another user, that user alone is let in by an ACL entry.
    tmpdir_mode = 0o700

    def _resolve_accel(self) -> str:
        return "tcg"                  # lab domains are type='qemu'

    def _pre_launch(self) -> None:
        require_libvirt()
        super()._pre_launch()

    def _launch(self) -> None:
        """Create the transient domain and connect to its serial console."""
        import libvirt
        assert self._tmpdir is not None
        tmp = Path(self._tmpdir)
        sock_path = tmp / "console.sock"
        xml = self.domain_xml(self._manifest_file, sock_path)
        self.command = ["virsh", "-c", self.uri, "create", f"<{self.domain_name}.xml>"]
        (tmp / "domain.xml").write_text(xml)
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            raise BackendError(f"cannot connect to {self.uri}: {err}") from err
        _let_qemu_in(conn, tmp)
        if self.trace is not None:
            _let_qemu_in(conn, self.trace.path, "rw")
        # if we are killed, whoever reaps our temp dir destroys the domain (libvirtd's QEMU
        # is not our child: pdeathsig cannot take it with us)
        own(tmp, on_reap=["virsh", "-c", self.uri, "destroy", self.domain_name])
        try:
            self._dom = conn.createXML(xml, 0)
        except libvirt.libvirtError as err:
            raise LaunchError(f"libvirt could not start {self.domain_name}",
                              output=str(err)) from err
        finally:
            conn.close()
        self._sock = _connect_unix(sock_path, 10)
        self._attach(Console(self._sock.makefile("rb"), self.console_log),
                     LibvirtBackend(self.uri, self.domain_name))

    def _post_launch(self) -> None:
        self.accel = "tcg"

    def _exit_reason(self) -> str | None:
        if self._dom is not None and not self.running:
            return "the libvirt domain is no longer running"
        return None

    def _soft_shutdown(self, timeout: float) -> None:
        self._hard_shutdown()        # a lab domain has nothing to flush: destroy it

    def _hard_shutdown(self) -> None:
        """Destroy the domain (it is transient: nothing stays defined)."""
        try:
            self._dom.destroy()
        except Exception:  # noqa: BLE001 - it may have just powered off
            log.debug("destroy failed", exc_info=True)

    def _post_shutdown(self) -> None:
        self.exitcode = 0 if self._dom is not None else None
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            super()._post_shutdown()
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._dom = None if not self.running else self._dom

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.running:
            self._dom.destroy()

    def wait_exit(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > deadline:
                raise WaitTimeout(f"domain {self.domain_name} did not stop within {timeout:.0f} s")
            time.sleep(0.2)
        return 0


#: libvirt's namespace for raw QEMU arguments in a domain's XML
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)


def qemu_dac_uid(capabilities_xml: str) -> int | None:
    """The uid libvirt runs QEMU domains as (the DAC security model's base label for
    type 'qemu' in the host capabilities, ``+64055:+64055``); None if not given."""
    root = ET.fromstring(capabilities_xml)
    for model in root.iter("secmodel"):
        if model.findtext("model") != "dac":
            continue
        for label in model.iter("baselabel"):
            if label.get("type") == "qemu" and label.text:
                uid = label.text.split(":", 1)[0].lstrip("+")
                return int(uid) if uid.isdigit() else None
    return None


def _let_qemu_in(conn: Any, path: Path, perms: str = "rwx") -> None:
    """libvirt's QEMU binds the console socket in *path* (0700, ours) and writes the trace
    file: if it runs as another user, give that user, and nobody else, access with an ACL
    entry."""
    uid = qemu_dac_uid(conn.getCapabilities())
    if uid is not None and uid != os.geteuid():
        _proc.run(["setfacl", "-m", f"u:{uid}:{perms}", path])


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise LaunchError(f"console socket {path} did not appear") from None
            time.sleep(0.05)
