"""The guest's kernel: its ELF image unpacked from a bzImage and booted through PVH (pure:
bzImages made here, around ELF images made here)."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from kvmlab.guest.build import _pvh_kernel, has_pvh_entry


def _elf(notes: list[tuple[bytes, int]]) -> bytes:
    """A minimal ELF64 image with one PT_NOTE segment holding *notes* (owner, type)."""
    body = b""
    for owner, ntype in notes:
        name = owner + b"\0"
        body += struct.pack("<III", len(name), 8, ntype)
        body += name.ljust((len(name) + 3) // 4 * 4, b"\0") + b"\x50\x08\x00\x01\0\0\0\0"
    ehdr = bytearray(64)
    ehdr[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<Q", ehdr, 0x20, 64)                    # e_phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)                # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(ehdr) + phdr + body


def _bzimage(packed: bytes, version: int = 0x20F, size: int | None = None) -> bytes:
    """A bzImage header (boot protocol *version*) with *packed* after 2 setup sectors, and
    the unpacked size after it as the kernel's build appends it (that of PVH unless *size*)."""
    payload = packed + struct.pack("<I", len(PVH) if size is None else size)
    img = bytearray(3 * 512)
    img[0x1F1] = 2
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, version)
    struct.pack_into("<II", img, 0x248, 16, len(payload))     # after 16 bytes of code
    return bytes(img) + b"\x90" * 16 + payload + b"\0" * 4


PVH = _elf([(b"Xen", 6), (b"Xen", 18)])
NO_PVH = _elf([(b"Xen", 6), (b"GNU", 18)])


def test_a_pvh_entry_is_a_xen_note_of_type_18() -> None:
    assert has_pvh_entry(PVH)
    assert not has_pvh_entry(NO_PVH)              # type 18 of another owner
    assert not has_pvh_entry(b"MZ" + PVH[2:])     # not an ELF image
    assert not has_pvh_entry(PVH[:80])            # its notes cut off


@pytest.mark.parametrize("pack", [gzip.compress, lzma.compress], ids=["gzip", "xz"])
def test_the_elf_kernel_is_unpacked_from_a_bzimage(tmp_path: Path, pack: object) -> None:
    bz, out = tmp_path / "vmlinuz", tmp_path / "vmlinux"
    bz.write_bytes(_bzimage(pack(PVH)))           # type: ignore[operator]
    assert _pvh_kernel(bz, out) and out.read_bytes() == PVH


@pytest.mark.parametrize("image", [
    _bzimage(gzip.compress(NO_PVH)),               # a kernel without a PVH entry
    _bzimage(gzip.compress(PVH), version=0x207),   # a boot protocol without the payload's place
    _bzimage(b"BZh9" + PVH),                       # packed in a way not handled (bzip2)
    _bzimage(gzip.compress(PVH)[:40]),             # cut short
    _bzimage(gzip.compress(PVH), size=len(PVH) + 1),   # not the length the build appended
    PVH,                                           # not a bzImage
], ids=["no-pvh", "protocol-2.07", "bzip2", "cut-short", "other-length", "elf"])
def test_any_other_kernel_boots_as_it_is(tmp_path: Path, image: bytes) -> None:
    bz, out = tmp_path / "vmlinuz", tmp_path / "vmlinux"
    bz.write_bytes(image)
    assert not _pvh_kernel(bz, out) and not out.exists()
