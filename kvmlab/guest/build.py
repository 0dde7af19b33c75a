"""Build the guest: a Debian cloud kernel and a busybox initramfs with kvmlab's init.

The kernel comes from Debian's ``linux-image-cloud-amd64`` (fetched with
``apt-get download``, unpacked with ``dpkg -x``).  Its virtio drivers are
modules; they go into the initramfs with their dependencies, resolved from a
``modules.dep`` made by ``depmod``, and are loaded in dependency order by init.
ext4 is built into that kernel.

The VM boots the kernel's uncompressed ELF image (``vmlinux``, unpacked from the bzImage)
through its PVH entry where it has one, as QEMU allows for ``-kernel``: under TCG the
bzImage's own decompressor and the real-mode setup took about 15 % of every boot
(``benchmarks/run.py`` boot).  A kernel without a PVH entry boots as the bzImage.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kvmlab import _proc, paths
from kvmlab.errors import GuestBuildError, GuestChanged, GuestNotBuilt, ToolError

log = logging.getLogger(__name__)

#: Modules the guest needs, by name; their dependencies are added.
WANTED_MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "qemu_fw_cfg")
KERNEL_META = "linux-image-cloud-amd64"
#: the guest agent and where Debian's qemu-guest-agent puts it (optional: fsfreeze studies)
QGA_BINARY = Path("/usr/sbin/qemu-ga")
FIO_BINARY = Path("/usr/bin/fio")
#: the read-only disk with fio and its libraries, in the guest's folder
TOOLS_DISK = "tools.img"
#: its virtio serial: how the guest finds it whatever disks come before it
TOOLS_SERIAL = "kvmlab-tools"
#: the kernel's uncompressed ELF image, booted through its PVH entry (when it has one)
PVH_KERNEL = "vmlinux"
#: what a built guest's folder holds; a guest built to an older layout is rebuilt
#: (2: the PVH kernel beside the bzImage)
LAYOUT = 2


@dataclass(frozen=True)
class Guest:
    """A built guest: what :class:`kvmlab.vm.machine.Machine` boots."""

    kernel: Path
    initrd: Path
    info: dict[str, object]

    @property
    def kernel_version(self) -> str:
        return str(self.info.get("kernel_version", "unknown"))

    @property
    def has_agent(self) -> bool:
        """The initramfs holds qemu-ga (built where qemu-guest-agent was installed)."""
        return bool(self.info.get("qemu_ga"))

    @property
    def tools(self) -> Path | None:
        """The tools disk (fio and its libraries; built where fio was installed), or None."""
        path = self.kernel.parent / TOOLS_DISK
        if not (self.info.get("fio") and path.is_file()):
            return None
        sums = self.info.get("files_sha256")
        if not isinstance(sums, dict) or file_digest(path) != sums.get(TOOLS_DISK):
            raise GuestChanged(f"the guest's {TOOLS_DISK} in {path.parent} changed since it "
                               "was built: rebuild with 'kvmlab guest build --force'")
        return path


def _init_script() -> str:
    return resources.files("kvmlab.guest").joinpath("init.sh").read_text()


def init_digest() -> str:
    """sha256 of the init script this kvmlab ships (a guest built from another is stale)."""
    return hashlib.sha256(_init_script().encode()).hexdigest()


def load_guest(directory: Path | None = None) -> Guest:
    """The guest built in *directory* (default ``data/guest``), or GuestNotBuilt.

    A guest whose init script differs from this kvmlab's counts as not built.
    """
    d = Path(directory) if directory else paths.guest_dir()
    kernel, initrd, meta = d / "vmlinuz", d / "initrd.img", d / "guest.json"
    if not (kernel.is_file() and initrd.is_file() and meta.is_file()):
        raise GuestNotBuilt(f"guest not built in {d}: run 'kvmlab guest build'")
    info = json.loads(meta.read_text())
    if info.get("init_sha256") != init_digest() or "files_sha256" not in info \
            or info.get("layout") != LAYOUT:
        raise GuestNotBuilt(f"guest in {d} is out of date: run 'kvmlab guest build'")
    if info.get("pvh"):
        kernel = d / PVH_KERNEL
        if not kernel.is_file():
            raise GuestChanged(f"the guest's {PVH_KERNEL} in {d} is gone since it was built: "
                               "rebuild with 'kvmlab guest build --force'")
    for f in (kernel, initrd):
        if file_digest(f) != info["files_sha256"].get(f.name):
            raise GuestChanged(f"the guest's {f.name} in {d} changed since it was built: "
                               "rebuild with 'kvmlab guest build --force'")
    return Guest(kernel, initrd, info)


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of *path*, remembered while the file's inode, size and mtime stay the same
    (a VM launch checks the guest's files; hashing them each time would cost ~50 ms)."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _resolve_modules(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module paths (relative to *moddir*, without .ko) in load order, deps first."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        for dep in deps.get(mod, []):
            visit(dep)
        if mod not in order:
            order.append(mod)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
        else:
            log.warning("module %s not found in %s (built in?)", name, moddir)
    for m in order:
        if not m.endswith(".ko"):
            raise GuestBuildError(f"compressed module {m} is not supported; use an uncompressed one")
    return [m[: -len(".ko")] for m in order]


def _fetch_debian_kernel(work: Path) -> tuple[Path, Path, str]:
    """Download and unpack the cloud kernel; return (vmlinuz, modules dir, version)."""
    depends = _proc.run(["apt-cache", "depends", KERNEL_META])
    pkg = next((ln.split(":", 1)[1].strip() for ln in depends.splitlines()
                if ln.strip().startswith("Depends: linux-image-")), None)
    if not pkg:
        raise GuestBuildError(f"cannot resolve {KERNEL_META} (run 'apt-get update' first?)")
    _proc.run(["apt-get", "download", pkg], cwd=work, timeout=900)
    debs = sorted(work.glob(f"{pkg}_*.deb"))
    if not debs:
        raise GuestBuildError(f"apt-get download {pkg} left no .deb")
    root = work / "root"
    _proc.run(["dpkg", "-x", debs[0], root])
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise GuestBuildError(f"no vmlinuz in {debs[0].name}")
    version = kernels[0].name[len("vmlinuz-"):]
    _proc.run(["depmod", "-b", root, version])
    return kernels[0], root / "lib" / "modules" / version, version


#: the bzImage payload's compressions by magic: Python's own, or the program that unpacks it
_UNPACKERS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"),
    (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"))
#: the ELF note (owner "Xen") that holds a kernel's 32-bit PVH entry point
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _bzimage_payload(image: bytes) -> bytes | None:
    """The compressed kernel inside a bzImage (boot protocol 2.08 or later), or None."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS" or \
            struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return image[start:start + length] if start + length <= len(image) else None


def _unpack(payload: bytes) -> bytes | None:
    """Decompress a bzImage payload by its magic; None for a kind not handled here, or for
    a result of another length than the kernel's build appended to the payload (le32)."""
    kind = next((k for magic, k in _UNPACKERS if payload.startswith(magic)), None)
    data: bytes | None = None
    if kind == "gzip":
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    elif kind in ("xz", "lzma"):
        data = lzma.LZMADecompressor(
            lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE).decompress(payload)
    elif kind in ("zstd", "lz4") and shutil.which(kind):
        # (lz4 says the appended length is an error, after writing the whole kernel)
        data = subprocess.run([kind, "-dc"], input=payload, capture_output=True,
                              check=False).stdout
    if not data or len(payload) < 4 or len(data) != struct.unpack("<I", payload[-4:])[0]:
        return None
    return data


def has_pvh_entry(elf: bytes) -> bool:
    """The ELF64 image has a PVH entry point (a ``Xen`` note of type
    XEN_ELFNOTE_PHYS32_ENTRY in a PT_NOTE segment): QEMU can boot it with ``-kernel``."""
    try:
        return _has_pvh_note(elf)
    except struct.error:                                      # headers past the end
        return False


def _has_pvh_note(elf: bytes) -> bool:
    if elf[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:                                       # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\x00")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _pvh_kernel(bzimage: Path, out: Path) -> bool:
    """Write *bzimage*'s uncompressed ELF kernel to *out* if it has a PVH entry (True);
    a kernel that is not a bzImage, packed in a way not handled, or without PVH: False."""
    try:
        payload = _bzimage_payload(bzimage.read_bytes())
        elf = _unpack(payload) if payload else None
    except (OSError, lzma.LZMAError, zlib.error) as err:
        log.info("no PVH kernel from %s: %s", bzimage, err)
        return False
    if not elf or not has_pvh_entry(elf):
        return False
    out.write_bytes(elf)
    return True


def _pack_initramfs(tree: Path, out: Path) -> None:
    """cpio (newc) + gzip of *tree* into *out*."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    listing = ("\n".join(["."] + names) + "\n").encode()
    proc = subprocess.run([_proc.which("cpio"), "-o", "-H", "newc", "--quiet", "-R", "0:0"],
                          input=listing, cwd=tree, capture_output=True, check=False)
    if proc.returncode != 0:
        raise GuestBuildError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
    with gzip.open(out, "wb", compresslevel=6) as fh:
        fh.write(proc.stdout)


def _add_binary(tree: Path, binary: Path) -> None:
    """Copy a dynamically linked *binary* and every library ``ldd`` lists into *tree*,
    at the same paths (the loader included)."""
    out = _proc.run(["ldd", binary])
    files = [binary]
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                files.append(Path(target))
        elif parts and parts[0].startswith("/"):
            files.append(Path(parts[0]))
    for f in files:
        dest = tree / str(f).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f.resolve(), dest)


def _qga_version() -> str | None:
    if not QGA_BINARY.is_file():
        return None
    proc = subprocess.run([QGA_BINARY, "--version"], capture_output=True, check=False)
    text = proc.stdout.decode(errors="replace").strip().splitlines()
    return text[0] if text else "qemu-ga"


def _fio_version() -> str | None:
    if not FIO_BINARY.is_file():
        return None
    proc = subprocess.run([FIO_BINARY, "--version"], capture_output=True, check=False)
    return proc.stdout.decode(errors="replace").strip() or "fio"


def _make_tools_disk(work: Path, out: Path, version: str) -> None:
    """fio and every library ``ldd`` lists for it on a read-only ext4 image, which the guest
    mounts at ``/tools`` when asked (``kvmlab.tools=1``).  Debian's fio links librbd,
    librados and gfapi: about 80 MiB.  In the initramfs they made every boot 1.75x as long
    (2.76 s against 1.58 s to init under TCG, measured 2026-12-02), a disk costs nothing
    until it is mounted.  ``/libpath`` holds the library folders for the loader, ``/version``
    fio's (the guest says it when it mounts the disk: running fio for it, through the
    loader and its libraries, made a boot 1.45x as long)."""
    tree = work / "tools"
    tree.mkdir()
    _add_binary(tree, FIO_BINARY)
    (tree / "version").write_text(version + "\n")
    libdirs = sorted({"/" + str(f.parent.relative_to(tree)) for f in tree.rglob("*.so*")})
    (tree / "libpath").write_text(":".join(f"/tools{d}" for d in libdirs) + "\n")
    size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
    with open(out, "wb") as fh:
        fh.truncate((size * 5 // 4 // (1 << 20) + 16) << 20)
    _proc.run(["mkfs.ext4", "-q", "-F", "-L", TOOLS_SERIAL, "-d", tree, out])


def _busybox_version(busybox: Path) -> str:
    proc = subprocess.run([busybox], capture_output=True, check=False)
    first = (proc.stdout or proc.stderr).decode(errors="replace").splitlines()
    return first[0].strip() if first else "busybox"


def build_guest(out: Path | None = None, *, kernel: Path | None = None,
                modules: Path | None = None, force: bool = False) -> Guest:
    """Build the guest into *out* (default ``data/guest``); idempotent unless *force*.

    :param kernel: a kernel image the user already has (skips the Debian download).
    :param modules: that kernel's ``lib/modules/<version>`` folder, if its virtio
        drivers are modules (needs ``modules.dep``).
    :raise GuestBuildError: on any failure; nothing half-built is left in *out*.
    """
    out = Path(out) if out else paths.guest_dir()
    if not force:
        try:
            return load_guest(out)
        except GuestChanged:
            raise                       # someone's files: replaced only when asked (--force)
        except GuestNotBuilt:
            pass
    if kernel is not None and not Path(kernel).is_file():
        raise GuestBuildError(f"kernel {kernel} does not exist")
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        raise GuestBuildError("busybox not found at /bin/busybox (install busybox-static)")
    if b"ld-linux" in busybox.read_bytes()[:8192]:
        raise GuestBuildError("/bin/busybox is dynamically linked (install busybox-static)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvmlab-guest-", dir=out.parent) as tmp:
        work = Path(tmp)
        moddir: Path | None
        try:
            if kernel is None:
                vmlinuz, moddir, version = _fetch_debian_kernel(work)
                source = KERNEL_META
            else:
                vmlinuz, moddir, version = Path(kernel), Path(modules) if modules else None, "user"
                source = str(kernel)
        except ToolError as err:
            raise GuestBuildError(f"kernel fetch failed: {err}") from err
        tree = work / "initramfs"
        for d in ("bin", "dev", "proc", "sys", "mnt", "lib/modules"):
            (tree / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, tree / "bin" / "busybox")
        init = tree / "init"
        init.write_text(_init_script())
        init.chmod(0o755)
        mods: list[str] = []
        if moddir is not None:
            for rel in _resolve_modules(moddir, WANTED_MODULES):
                name = Path(rel).name
                shutil.copy2(moddir / f"{rel}.ko", tree / "lib" / "modules" / f"{name}.ko")
                mods.append(name)
        (tree / "modules.list").write_text("\n".join(mods) + "\n")
        qga = _qga_version()
        if qga:
            try:
                _add_binary(tree, QGA_BINARY)
            except (ToolError, OSError) as err:
                raise GuestBuildError(f"cannot add qemu-ga to the guest: {err}") from err
        staged = work / "staged"
        staged.mkdir()
        fio = _fio_version()
        if fio:
            try:
                _make_tools_disk(work, staged / TOOLS_DISK, fio)
            except (ToolError, OSError) as err:
                raise GuestBuildError(f"cannot make the guest's tools disk: {err}") from err
        _pack_initramfs(tree, staged / "initrd.img")
        shutil.copy2(vmlinuz, staged / "vmlinuz")
        pvh = _pvh_kernel(staged / "vmlinuz", staged / PVH_KERNEL)
        info = {"kernel_version": version, "kernel_source": source, "modules": mods,
                "init_sha256": init_digest(), "layout": LAYOUT, "pvh": pvh,
                "files_sha256": {f.name: file_digest(f)
                                 for f in (staged / "vmlinuz", staged / PVH_KERNEL,
                                           staged / "initrd.img", staged / TOOLS_DISK)
                                 if f.is_file()},
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "busybox": _busybox_version(busybox), "qemu_ga": qga, "fio": fio}
        (staged / "guest.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return load_guest(out)
