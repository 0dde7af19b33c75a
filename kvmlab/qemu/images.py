"""Disk images on the host: make a guest disk, overlays, info, compare, sizes (the seed's ``ll``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmlab import _proc
from kvmlab.errors import BadInput, ToolError
from kvmlab.guest.workload import Manifest
from kvmlab.qemu import builds

FORMATS = ("qcow2", "raw")
#: e2fsck's last line: "<label>: 11/8192 files (0.0% non-contiguous), 6938/32768 blocks"
_FSCK_SUMMARY = re.compile(r"^\S*: \d+/\d+ files ")


@dataclass(frozen=True)
class FileSize:
    """Apparent size (``ls -l``) and allocated size (``du``) of an image file."""

    apparent: int
    allocated: int


def file_size(path: str | Path) -> FileSize | None:
    """Sizes of *path*, or None when it does not exist (yet, or any more)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileSize(st.st_size, st.st_blocks * 512)


def make_guest_disk(path: str | Path, size_mib: int = 64, fmt: str = "qcow2",
                    fill_mib: int = 0) -> Manifest:
    """Create an ext4 guest disk at *path*; optionally with ``/fill.bin`` of random data.

    The file system is made on the host with mkfs.ext4 (no mount, no root) and
    the fill file is written with debugfs, so the disk starts with allocated
    data for the mirror to copy.  Returns the manifest of what it holds.

    :raise BadInput: *path* exists, bad size or format; nothing is created.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise BadInput(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    if not isinstance(size_mib, int) or size_mib < 16:
        raise BadInput(f"size_mib={size_mib!r} must be an integer of at least 16")
    if not isinstance(fill_mib, int) or fill_mib < 0 or fill_mib > size_mib * 3 // 4:
        raise BadInput(f"fill_mib={fill_mib!r} must be between 0 and 3/4 of the disk size")
    if path.exists():
        raise BadInput(f"{path} already exists")
    if not path.parent.is_dir():
        raise BadInput(f"directory {path.parent} does not exist")
    manifest = Manifest()
    with tempfile.TemporaryDirectory(prefix=".kvmlab-mk-", dir=path.parent) as tmp:
        raw = Path(tmp) / "disk.raw"
        with open(raw, "wb") as fh:
            fh.truncate(size_mib * 1024 * 1024)
        _proc.run(["mkfs.ext4", "-q", "-F", "-L", "kvmlab", "-E", "lazy_itable_init=0", raw])
        if fill_mib:
            fill = Path(tmp) / "fill.bin"
            digest = hashlib.sha256()
            with open(fill, "wb") as fh:
                for _ in range(fill_mib):
                    chunk = os.urandom(1024 * 1024)
                    digest.update(chunk)
                    fh.write(chunk)
            # debugfs parses its request line itself: give it names without spaces (cwd),
            # and check it wrote the file, as it exits 0 when it did not
            _proc.run(["debugfs", "-w", "-R", "write fill.bin fill.bin", raw.name], cwd=Path(tmp))
            stat = _proc.run(["debugfs", "-R", "stat /fill.bin", raw.name], cwd=Path(tmp))
            if f"Size: {fill_mib * 1024 * 1024}" not in stat:
                raise ToolError(f"debugfs did not write /fill.bin into {path.name}")
            manifest.add_file("/fill.bin", digest.hexdigest())
        if fmt == "raw":
            os.replace(raw, path)
        else:
            qemu_img(["convert", "-f", "raw", "-O", fmt, raw, path])
    return manifest


def sha256(path: str | Path) -> str:
    """sha256 of a whole file (to show an image did not change)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def create(path: str | Path, size: int, fmt: str = "raw") -> Path:
    """An empty image of *size* bytes (a target for ``mode=existing``)."""
    path = Path(path)
    if path.exists():
        raise BadInput(f"{path} already exists")
    qemu_img(["create", "-q", "-f", fmt, path, str(size)])
    return path


def create_overlay(path: str | Path, backing: str | Path, fmt: str = "qcow2") -> Path:
    """``qemu-img create -f qcow2 -b BACKING -F <its format> PATH`` (the seed's overlays)."""
    path, backing = Path(path), Path(backing)
    if path.exists():
        raise BadInput(f"{path} already exists")
    if not backing.is_file():
        raise BadInput(f"backing file {backing} does not exist")
    bfmt = info(backing)["format"]
    qemu_img(["create", "-q", "-f", fmt, "-b", backing.resolve(), "-F", bfmt, path])
    return path


def info(path: str | Path, backing_chain: bool = False) -> Any:
    """``qemu-img info --output=json`` (shared lock: works while QEMU has it open)."""
    cmd = ["info", "-U", "--output=json"]
    if backing_chain:
        cmd.append("--backing-chain")
    return json.loads(qemu_img(cmd + [str(path)]))


def qemu_img(args: Sequence[str | Path]) -> str:
    """Run the current QEMU build's ``qemu-img`` (see :func:`kvmlab.qemu.builds.using`)."""
    build = builds.current()
    return _proc.run([build.tool("qemu-img"), *args], env=build.env())


def compare(a: str | Path, b: str | Path, strict: bool = False) -> bool:
    """``qemu-img compare``: True if the guest-visible contents are identical.

    :raise ToolError: qemu-img could not compare (exit code 2 or more).
    """
    cmd = [builds.tool("qemu-img"), "compare", "-U"] + (["-s"] if strict else []) + \
        [str(a), str(b)]
    rc, _out, err = _proc.run_rc(cmd, env=builds.current().env())
    if rc > 1:
        raise ToolError(f"qemu-img compare failed: {err.strip()}", command=cmd, output=err)
    return rc == 0


def fsck(path: str | Path) -> dict[str, Any]:
    """Read-only check of the ext4 file system in the raw image *path* (``e2fsck -fn``).

    ``clean`` means e2fsck found nothing to fix (exit code 0).  ``needs_recovery`` is
    ext4's superblock flag, which the kernel sets on every read-write mount and clears
    only at unmount or in a freeze (after flushing the journal): a copy of any mounted,
    unfrozen file system has it, whether the guest was paused or not, so it tells a live
    mount from a frozen or unmounted one, not a consistent copy from a torn one.  Nothing
    is changed.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"image {path} does not exist")
    rc, out, err = _proc.run_rc(["e2fsck", "-f", "-n", str(path)], timeout=300)
    if rc >= 8:
        raise ToolError(f"e2fsck could not check {path}: {(err or out).strip()[-200:]}",
                        command=["e2fsck", "-f", "-n", str(path)], output=err)
    _rc, head, _err = _proc.run_rc(["dumpe2fs", "-h", str(path)], timeout=60)
    features = next((ln.split(":", 1)[1].split() for ln in head.splitlines()
                     if ln.startswith("Filesystem features:")), [])
    problems = [ln.strip() for ln in out.splitlines()
                if ln.strip() and not ln.startswith(("Pass ", "e2fsck", str(path)))
                and "skipping journal recovery" not in ln]
    return {"fsck_rc": rc, "clean": rc == 0, "needs_recovery": "needs_recovery" in features,
            "problems": problems[:20]}


def check_replayed(path: str | Path, scratch: str | Path, files: Sequence[str]) -> dict[str, Any]:
    """What a guest would find in the raw ext4 image *path* after its next mount.

    Three steps, none of which changes *path*: the journal's state as cut (ext4's
    ``needs_recovery`` flag); then, on a scratch copy in the folder *scratch*, the journal
    replayed (``e2fsck -E journal_only``, as a mount would) and the file system checked
    (``e2fsck -fn``); then the content of each of *files* (absolute guest paths) read from
    the replayed copy with debugfs (no mount).  Returns ``needs_recovery``, ``fsck_rc``,
    ``clean`` (after replay), ``problems`` and ``files`` (path -> bytes, None if absent).
    """
    path, scratch = Path(path), Path(scratch)
    if not path.is_file():
        raise BadInput(f"image {path} does not exist")
    for f in files:
        Manifest._check(f)
    _rc, head, _err = _proc.run_rc(["dumpe2fs", "-h", str(path)], timeout=60)
    needs_recovery = any(ln.startswith("Filesystem features:") and "needs_recovery" in ln
                         for ln in head.splitlines())
    with tempfile.TemporaryDirectory(prefix="replay-", dir=scratch) as tmp:
        work = Path(tmp)
        copy = work / "replayed.raw"
        _proc.run(["cp", "--sparse=always", str(path), str(copy)])
        rc, out, err = _proc.run_rc(["e2fsck", "-E", "journal_only", "-y", str(copy)],
                                    timeout=300)
        if rc >= 8:
            raise ToolError(f"e2fsck could not replay the journal of {path}: "
                            f"{(err or out).strip()[-200:]}", output=err)
        rc, out, err = _proc.run_rc(["e2fsck", "-f", "-n", str(copy)], timeout=300)
        if rc >= 8:
            raise ToolError(f"e2fsck could not check {path}: {(err or out).strip()[-200:]}",
                            output=err)
        problems = [ln.strip() for ln in out.splitlines()
                    if ln.strip() and not ln.startswith(("Pass ", "e2fsck", str(copy), "Fix?"))
                    and not _FSCK_SUMMARY.match(ln)]
        dump = work / "files"
        dump.mkdir(mode=0o700)
        # our own names for the host side; the guest's paths only inside the image
        (work / "commands").write_text("".join(f"dump {f} {dump}/{i}\n"
                                               for i, f in enumerate(files)))
        _proc.run(["debugfs", "-f", str(work / "commands"), str(copy)], timeout=300)
        got: dict[str, bytes | None] = {}
        for i, f in enumerate(files):
            try:
                fd = os.open(dump / str(i), os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                got[f] = None
                continue
            with os.fdopen(fd, "rb") as fh:
                got[f] = fh.read()
    return {"needs_recovery": needs_recovery, "fsck_rc": rc, "clean": rc == 0,
            "problems": problems[:20], "files": got}
