"""Saved guests (kvmlab.vm.saved): what makes two VMs one shape, and which saved files
are trusted (pure: no QEMU)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kvmlab.vm import saved

BUILD = "/usr/bin/qemu-system-x86_64 7.2.22"
GUEST = {"files_sha256": {"vmlinux": "ab"}, "layout": 2}


def _cmd(*, disk: str = "/a/disk.qcow2", fmt: str = "qcow2", cache: str = "none",
         append: str = "console=ttyS0 quiet kvmlab.mode=idle", name: str = "kvmlab",
         sock: str = "/tmp/kvmlab-vm-1/qmp.sock", memory: str = "256",
         more: tuple[str, ...] = ()) -> list[str]:
    return ["qemu-system-x86_64", "-name", name, "-accel", "tcg", "-m", memory,
            "-kernel", "/g/vmlinux", "-initrd", "/g/initrd.img", "-append", append,
            "-chardev", f"socket,id=qmp0,path={sock}", "-mon", "chardev=qmp0,mode=control",
            "-drive", f"file={disk},format={fmt},if=none,id=drive0,cache={cache}",
            "-device", "virtio-blk-pci,drive=drive0,id=vd0", *more]


def _key(**kw: object) -> str:
    build = kw.pop("build", BUILD)
    guest = kw.pop("guest", GUEST)
    return saved.shape(_cmd(**kw), build=str(build), guest=guest)  # type: ignore[arg-type]


def test_one_shape_whatever_the_disks_names_and_parameters() -> None:
    """What no driver had seen when the boot was saved does not make another shape: the
    disks' images, formats and cache modes, the VM's name and sockets, kvmlab's own
    parameters (they come on the console)."""
    base = _key()
    assert _key(disk="/b/other,,name.raw", fmt="raw", cache="writeback") == base
    assert _key(name="kvmlab-vm-src", sock="/tmp/kvmlab-vm-2/qmp.sock") == base
    assert _key(append="console=ttyS0 quiet kvmlab.mode=workload kvmlab.data=vdb") == base


@pytest.mark.parametrize("change", [
    {"more": ("-device", "virtio-blk-pci,drive=drive1,id=vd1")},   # another disk
    {"more": ("-fw_cfg", "name=opt/kvmlab/manifest,file=/x")},     # a file the guest reads
    {"memory": "512"},
    {"append": "console=ttyS0 kvmlab.mode=idle"},                   # the kernel's own
    {"build": "/opt/qemu-10.0/bin/qemu-system-x86_64 10.0.2"},
    {"guest": {"files_sha256": {"vmlinux": "cd"}, "layout": 2}},
])
def test_another_shape(change: dict[str, object]) -> None:
    assert _key(**change) != _key()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KVMLAB_DATA", str(tmp_path))
    return tmp_path


def test_a_saved_file_is_published_and_opened(data: Path) -> None:
    fd, part = saved.new_file("k1")
    os.write(fd, b"state")
    os.close(fd)
    assert saved.open_saved("k1") is None              # not there until published
    saved.publish(part, "k1")
    assert not part.exists()
    got = saved.open_saved("k1")
    assert got is not None
    try:
        assert os.read(got, 10) == b"state"
    finally:
        os.close(got)
    assert oct(saved.folder().stat().st_mode & 0o777) == "0o700"
    assert oct(saved.path_of("k1").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("plant", ["symlink", "writable"])
def test_a_saved_file_not_ours_to_trust_is_not_resumed(data: Path, plant: str) -> None:
    saved.folder().mkdir(parents=True, mode=0o700)
    target = saved.path_of("k2")
    elsewhere = data / "elsewhere"
    elsewhere.write_bytes(b"state")
    if plant == "symlink":
        target.symlink_to(elsewhere)
    else:
        target.write_bytes(b"state")
        target.chmod(0o666)
    assert saved.open_saved("k2") is None


def test_a_killed_savers_part_goes_a_live_ones_stays(data: Path) -> None:
    folder = saved.folder()
    folder.mkdir(parents=True, mode=0o700)
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = folder / f".{dead.pid}-aa.k3.part"
    kept = folder / f".{os.getpid()}-bb.k3.part"
    gone.write_bytes(b"x")
    kept.write_bytes(b"x")
    fd, part = saved.new_file("k3")
    os.close(fd)
    assert not gone.exists() and kept.exists() and part.exists()


def test_on_unless_the_environment_says_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMLAB_SAVED_GUESTS", raising=False)
    assert saved.enabled()
    monkeypatch.setenv("KVMLAB_SAVED_GUESTS", "0")
    assert not saved.enabled()
    monkeypatch.setenv("KVMLAB_SAVED_GUESTS", "1")
    assert saved.enabled()
