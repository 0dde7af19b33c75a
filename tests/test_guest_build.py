"""Building the guest: idempotent, modules with dependencies, a user-supplied kernel."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from kvmlab.errors import GuestBuildError
from kvmlab.guest.build import Guest, build_guest, has_pvh_entry, load_guest
from kvmlab.vm.machine import Machine

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest

VIRTIO_ORDER = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                "virtio_pci", "virtio_blk"]


def _cpio_names(initrd: Path) -> list[str]:
    data = gzip.decompress(initrd.read_bytes())
    out = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return out.stdout.decode().split()


def test_built_guest_has_init_busybox_and_ordered_modules(guest: Guest) -> None:
    names = _cpio_names(guest.initrd)
    assert {"init", "bin/busybox", "modules.list"} <= set(names)
    mods = guest.info["modules"]
    assert isinstance(mods, list)
    for m in VIRTIO_ORDER + ["virtio_console", "qemu_fw_cfg"]:
        assert f"lib/modules/{m}.ko" in names
    # every module comes after the modules it depends on
    pos = {m: i for i, m in enumerate(mods)}
    assert pos["virtio_ring"] < pos["virtio"] < pos["virtio_pci"] < pos["virtio_blk"]
    assert pos["virtio_pci_modern_dev"] < pos["virtio_pci"]
    assert guest.kernel_version.endswith("cloud-amd64")
    # Debian's kernel has a PVH entry: every VM boots its ELF image, unpacked from the bzImage
    assert guest.info["pvh"] is True and guest.kernel.name == "vmlinux"
    assert has_pvh_entry(guest.kernel.read_bytes())
    assert guest.kernel.stat().st_size > 2 * (guest.kernel.parent / "vmlinuz").stat().st_size


def test_build_is_idempotent(guest: Guest) -> None:
    before = guest.initrd.stat().st_mtime_ns
    again = build_guest()
    assert again.initrd.stat().st_mtime_ns == before


def test_user_kernel_without_modules(guest: Guest, tmp_path: Path) -> None:
    out = tmp_path / "g"
    bzimage = guest.kernel.parent / "vmlinuz"
    g = build_guest(out, kernel=bzimage)
    assert g.info["kernel_source"] == str(bzimage) and g.info["modules"] == []
    assert (out / "vmlinuz").read_bytes() == bzimage.read_bytes()
    assert load_guest(out).kernel.read_bytes() == guest.kernel.read_bytes()     # its ELF
    with Machine(None, guest=g, accel="tcg") as vm:  # it boots; without virtio, no disk
        assert vm.wait_guest("boot", timeout=60).data["mode"] == "idle"


def test_missing_kernel_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match="does not exist"):
        build_guest(tmp_path / "g", kernel=tmp_path / "nope", force=True)
    assert not (tmp_path / "g").exists()


def test_stale_guest_is_rebuilt(guest: Guest, tmp_path: Path) -> None:
    import json
    import shutil
    stale = tmp_path / "g"
    shutil.copytree(guest.kernel.parent, stale, ignore=shutil.ignore_patterns("saved"))
    meta = json.loads((stale / "guest.json").read_text())
    meta["init_sha256"] = "0" * 64
    (stale / "guest.json").write_text(json.dumps(meta))
    from kvmlab.errors import GuestNotBuilt
    with pytest.raises(GuestNotBuilt, match="out of date"):
        load_guest(stale)
    rebuilt = build_guest(stale, kernel=guest.kernel.parent / "vmlinuz")
    assert rebuilt.info["init_sha256"] != "0" * 64
