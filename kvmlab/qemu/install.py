"""Install another QEMU build beside the system's, without touching the system's packages.

``kvmlab qemu add 10.0`` does what the brief measured by hand: an apt configuration of
our own (a sources list with only Debian's ``bookworm-backports`` suite, its lists and
cache under ``data/qemu/.apt``), ``apt-get download`` of QEMU's packages, and
``dpkg-deb -x`` into a private prefix.  The system's apt state, dpkg database and
``/usr`` are never written.

Installs are atomic: everything is unpacked into ``data/qemu/.partial-<version>-<hex>``
and renamed to ``data/qemu/<version>`` only after the unpacked emulator answered
``--version``; a failure (or a kill) leaves at most a partial folder, which is never
listed and is removed by the next ``add``.  Adding an installed version does nothing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from kvmlab import _proc
from kvmlab.errors import BadInput, ToolError
from kvmlab.qemu.builds import BUILD_FILE, QemuBuild, builds_dir, installed_names, load_build

#: Debian's suite the extra builds come from, and the packages a build is made of
SUITE = "bookworm-backports"
#: the opengl and spice modules too: QEMU looks for a module it lacks in the system's module
#: dir as well, and a module of another build (7.2's ui-opengl.so) makes it exit
#: ("Only modules from the same build can be loaded") -- libvirt's probe (qom-list-types)
#: loads every module
PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "qemu-utils",
            "qemu-block-extra", "qemu-system-modules-opengl", "qemu-system-modules-spice")
VERSION_RE = re.compile(r"^\d+\.\d+$")

Say = Callable[[str], None]


def debian_mirror() -> str:
    """The Debian mirror the system's apt already uses for bookworm (from ``apt-cache
    policy``), so the build comes from the same place as every other package;
    ``$KVMLAB_DEBIAN_MIRROR`` overrides it."""
    if os.environ.get("KVMLAB_DEBIAN_MIRROR"):
        return os.environ["KVMLAB_DEBIAN_MIRROR"]
    out = _proc.run(["apt-cache", "policy"], timeout=60)
    for line in out.splitlines():
        m = re.match(r"\s*\d+\s+(\S+)\s+bookworm(?:-updates)?/main\s", line)
        if m and "security" not in m.group(1):
            return m.group(1)
    raise ToolError("no Debian bookworm mirror in the system's apt sources "
                    "('apt-cache policy' lists none)")


class AptTree:
    """apt-get with its own sources list, lists and cache under *root* (nothing of the
    system's apt state is read for sources or written)."""

    def __init__(self, root: Path, mirror: str) -> None:
        self.root = root
        self.mirror = mirror

    def prepare(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial", "etc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "sources.list").write_text(f"deb {self.mirror} {SUITE} main\n")
        (self.root / "status").write_text("")     # the system's installed packages: not ours

    def options(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::Etc::sourcelist={r / 'etc' / 'sources.list'}",
                "-o", "Dir::Etc::sourceparts=-",
                "-o", f"Dir::State::Lists={r / 'lists'}",
                "-o", f"Dir::Cache={r / 'cache'}",
                "-o", f"Dir::State::status={r / 'status'}",
                "-o", "APT::Get::List-Cleanup=0",
                "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]

    def update(self) -> None:
        # --error-on=any: a mirror that cannot be reached is an error, not a warning
        _proc.run(["apt-get", "-q", "--error-on=any", *self.options(), "update"], timeout=600)

    def candidate(self, package: str) -> str | None:
        """The version of *package* in the suite (None: not there)."""
        out = _proc.run(["apt-cache", *self.options(), "policy", package], timeout=120)
        m = re.search(r"Candidate:\s*(\S+)", out)
        return m.group(1) if m and m.group(1) != "(none)" else None

    def download(self, packages: list[str], into: Path) -> list[Path]:
        _proc.run(["apt-get", "-q", *self.options(), "download", *packages], cwd=into,
                  timeout=1800)
        return sorted(into.glob("*.deb"))


def upstream(debian_version: str) -> str:
    """``1:10.0.2+ds-2+deb13u1~bpo12+1`` -> ``10.0.2``."""
    v = debian_version.split(":", 1)[-1]
    return re.split(r"[+~-]", v, maxsplit=1)[0]


def offered(tree: AptTree) -> str | None:
    """The QEMU version the suite offers (upstream form), None if it offers none."""
    cand = tree.candidate(PACKAGES[0])
    return upstream(cand) if cand else None


def _quiet(msg: str) -> None:
    pass


def add(version: str, *, say: Say = _quiet) -> QemuBuild:
    """Install QEMU *version* (``major.minor``) from the suite into ``data/qemu/<version>``.

    Idempotent: an installed version is returned as it is.

    :raise BadInput: *version* is malformed, or the suite offers another version (the
        message names it); nothing is created.
    :raise ToolError: apt or dpkg-deb failed; nothing is left half-installed.
    """
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise BadInput(f"QEMU version {version!r} must look like 10.0 (major.minor)")
    if version in installed_names():
        say(f"QEMU {version} is installed already: {builds_dir() / version}")
        return load_build(version)
    root = builds_dir()
    apt = root / ".apt"
    made = apt       # the topmost folder this add creates (data/, data/qemu/ or its .apt/)
    while not made.parent.exists():
        made = made.parent
    fresh = not made.exists()
    try:
        return _add(version, root, say)
    except BaseException:
        if fresh:                   # a refused or failed add leaves nothing new behind
            shutil.rmtree(made, ignore_errors=True)
        raise


def _add(version: str, root: Path, say: Say) -> QemuBuild:
    for stale in root.glob(".partial-*"):       # left by a killed or failed add
        shutil.rmtree(stale, ignore_errors=True)
    tree = AptTree(root / ".apt", debian_mirror())
    say(f"reading Debian's {SUITE} suite")
    tree.prepare()
    tree.update()
    have = offered(tree)
    if have is None or not (have == version or have.startswith(version + ".")):
        raise BadInput(f"QEMU {version} is not offered: Debian's {SUITE} has "
                       f"{have or 'no QEMU'} (try 'kvmlab qemu add "
                       f"{'.'.join((have or '10.0').split('.')[:2])}')")
    partial = root / f".partial-{version}-{secrets.token_hex(3)}"
    partial.mkdir(parents=True)
    try:
        debs = partial / "debs"
        debs.mkdir()
        say(f"downloading QEMU {have}: {', '.join(PACKAGES)}")
        files = tree.download(list(PACKAGES), debs)
        if len(files) != len(PACKAGES):
            raise ToolError(f"apt-get download gave {len(files)} of {len(PACKAGES)} packages")
        prefix = partial / "prefix"
        for deb in files:
            say(f"unpacking {deb.name}")
            _proc.run(["dpkg-deb", "-x", deb, prefix], timeout=600)
        shutil.rmtree(debs)
        build = QemuBuild.from_prefix(version, prefix, root=partial)
        reported = build.probe_version()
        (partial / BUILD_FILE).write_text(json.dumps({
            "name": version, "version": reported, "debian_version": tree.candidate(PACKAGES[0]),
            "suite": SUITE, "packages": list(PACKAGES), "installed": time.time()},
            indent=1) + "\n")
        partial.rename(root / version)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(f"installed QEMU {reported} as '{version}': {root / version}")
    return load_build(version)


def remove(name: str, *, say: Say = _quiet) -> None:
    """Remove the installed build *name* (never the system's QEMU).

    :raise BadInput: *name* is ``system`` or not installed (the message names those that are).
    """
    if name == "system":
        raise BadInput("the system's QEMU is Debian's package; kvmlab does not remove it")
    if name not in installed_names():
        raise BadInput(f"no QEMU build named {name!r}; installed: "
                       f"{', '.join(installed_names()) or 'none'} (and 'system')")
    target = builds_dir() / name
    doomed = target.with_name(f".partial-removing-{name}-{secrets.token_hex(3)}")
    target.rename(doomed)           # atomic: it stops counting as installed at once
    shutil.rmtree(doomed, ignore_errors=True)
    say(f"removed QEMU build '{name}'")
