"""The guest's tools disk (fio and its libraries), as the lab VM is given it: pure checks of
the command line and of what is refused (the boot is in tests/test_machine.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kvmlab.errors import BadInput, GuestChanged
from kvmlab.guest.build import TOOLS_DISK, Guest
from kvmlab.vm.machine import Drive, Machine


def _guest(tmp_path: Path, tools: bytes | None, recorded: bytes | None = None) -> Guest:
    info: dict[str, object] = {"kernel_version": "x", "files_sha256": {}}
    if tools is not None:
        (tmp_path / TOOLS_DISK).write_bytes(tools)
        info["fio"] = "fio-3.33"
        info["files_sha256"] = {TOOLS_DISK: hashlib.sha256(recorded or tools).hexdigest()}
    return Guest(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img", info=info)


def test_the_tools_disk_is_read_only_found_by_its_serial_and_not_a_vm_disk(
        tmp_path: Path) -> None:
    disk = tmp_path / "a.img"
    disk.write_bytes(b"")
    m = Machine(Drive(disk, "drive0", "raw"), guest=_guest(tmp_path, b"tools"), qemu="system",
                tools=True)
    cmd = m._command("tcg", tmp_path / "qmp.sock", None)
    i = cmd.index(f"if=none,id=kvmlab-tools,file={tmp_path / TOOLS_DISK},format=raw,"
                  "readonly=on")
    assert cmd[i + 2] == "virtio-blk-pci,drive=kvmlab-tools,serial=kvmlab-tools"
    assert "kvmlab.tools=1" in m.kernel_cmdline().split()
    assert [d.id for d in m.drives] == ["drive0"]          # no job, no record for it
    plain = Machine(Drive(disk, "drive0", "raw"), guest=_guest(tmp_path, b"tools"),
                    qemu="system")
    assert "kvmlab.tools=1" not in plain.kernel_cmdline()
    assert not any("kvmlab-tools" in a for a in plain._command("tcg", tmp_path / "q", None))


def test_no_tools_disk_or_a_changed_one_is_one_line_before_any_launch(tmp_path: Path) -> None:
    disk = tmp_path / "a.img"
    disk.write_bytes(b"")
    with pytest.raises(BadInput, match="no tools disk .fio.: install fio"):
        Machine(Drive(disk, "drive0", "raw"), guest=_guest(tmp_path, None), qemu="system",
                tools=True)
    with pytest.raises(GuestChanged, match=f"the guest's {TOOLS_DISK} .* changed"):
        Machine(Drive(disk, "drive0", "raw"), qemu="system", tools=True,
                guest=_guest(tmp_path, b"tools", recorded=b"other"))
