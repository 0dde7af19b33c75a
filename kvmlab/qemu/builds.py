"""QEMU builds: the system's QEMU and others installed beside it (``data/qemu/<version>``).

A :class:`QemuBuild` is everything kvmlab needs to run one QEMU: the system emulator,
its tools (``qemu-img``, ``qemu-io``, ``qemu-storage-daemon``), the ``-L`` data dirs,
the block-module dir (``QEMU_MODULE_DIR``), its version; its capabilities are
:mod:`kvmlab.vm.qemu_probe`'s to ask.  The system's QEMU is always there as ``system``.

Every part of kvmlab that runs a QEMU program asks :func:`current` for it, so an
experiment run under :func:`using` uses one build's tools throughout: the VM, the
images it makes, the NBD server of a fault.  ``qemu=`` anywhere (an experiment,
notebook, sweep, the panel, the CLI) is a build name or a path to a QEMU binary,
resolved by :func:`resolve`.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from kvmlab import _proc, paths, trust
from kvmlab.errors import BadInput, ToolError

SYSTEM = "system"
EMULATOR = "qemu-system-x86_64"
BUILD_FILE = "build.json"
LIBVIRT_WRAPPER = "libvirt-emulator"
_VERSION_RE = re.compile(r"QEMU emulator version (\S+)")


def builds_dir() -> Path:
    """Where extra builds live: ``data/qemu``."""
    return paths.data_dir() / "qemu"


def installed_names() -> list[str]:
    """Names of the complete builds in ``data/qemu`` (a partial install never counts)."""
    root = builds_dir()
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir()
                   if not p.name.startswith(".") and (p / BUILD_FILE).is_file()),
                  key=lambda n: [int(x) if x.isdigit() else x for x in n.split(".")])


def names() -> list[str]:
    """Every build name ``qemu=`` accepts: ``system`` first."""
    return [SYSTEM, *installed_names()]


@dataclass(frozen=True)
class QemuBuild:
    """One QEMU: its programs, data and module dirs.

    :param name: ``system``, an installed version (``10.0``) or the binary's path.
    :param emulator: the ``qemu-system-x86_64`` to run.
    :param bindir: where its tools are (None: the system's ``PATH``).
    :param data_dirs: ``-L`` firmware/ROM dirs (empty: QEMU's built-in default).
    :param module_dir: its block modules (``QEMU_MODULE_DIR``), None: built-in default.
    :param root: the build's folder (its ``build.json`` and capability cache), if installed.
    """

    name: str
    emulator: Path
    bindir: Path | None = None
    data_dirs: tuple[Path, ...] = ()
    module_dir: Path | None = None
    root: Path | None = field(default=None, compare=False)

    @classmethod
    def system(cls) -> QemuBuild:
        return cls(SYSTEM, Path(_proc.which(EMULATOR)))

    @classmethod
    def from_prefix(cls, name: str, prefix: Path, root: Path | None = None) -> QemuBuild:
        """A build unpacked from Debian's packages into *prefix* (``<prefix>/usr/...``).
        Its ``bios.bin`` is a link into seabios, so the system's seabios dir follows its own."""
        usr = prefix / "usr"
        data = [usr / "share" / "qemu"]
        data += [d for d in (usr / "share" / "seabios", Path("/usr/share/seabios")) if d.is_dir()]
        return cls(name, usr / "bin" / EMULATOR, usr / "bin", tuple(data),
                   usr / "lib" / "x86_64-linux-gnu" / "qemu", root)

    @classmethod
    def from_binary(cls, path: Path) -> QemuBuild:
        """A QEMU binary given by path; its tools are those beside it, else the system's."""
        return cls(str(path), path, path.parent)

    # -- running its programs ---------------------------------------------------------
    def tool(self, program: str) -> str:
        """Absolute path of *program* (``qemu-img``, ``qemu-storage-daemon``...) of this build."""
        if program == EMULATOR:
            return str(self.emulator)
        if self.bindir is not None and (self.bindir / program).is_file():
            return str(self.bindir / program)
        if self.root is not None:                      # an installed build has them all
            raise ToolError(f"QEMU build {self.name} has no {program}")
        return _proc.which(program)

    def env(self) -> dict[str, str]:
        """The environment its programs need: ``QEMU_MODULE_DIR`` when it has its own modules
        (without it a newer QEMU loads the system's modules and fails on a missing symbol)."""
        env = dict(os.environ)
        if self.module_dir is not None and self.module_dir.is_dir():
            env["QEMU_MODULE_DIR"] = str(self.module_dir)
        return env

    def libvirt_emulator(self) -> Path:
        """What libvirt runs as the domain's ``<emulator>``.

        libvirt probes an emulator in its own environment and asks ``qom-list-types``,
        which loads every module: without ``QEMU_MODULE_DIR`` an installed build loads the
        system's modules and exits ("Only modules from the same build can be loaded"), and
        ``<qemu:env>`` reaches the domain but not that probe.  So an installed build gets a
        two-line wrapper (its module dir and ``-L`` dirs, then ``exec``; fixed paths, no
        user input) in its folder; other builds are run as they are."""
        if self.root is None or (self.module_dir is None and not self.data_dirs):
            return self.emulator
        lines = ["#!/bin/sh", "# kvmlab: how libvirt runs this QEMU build"]
        if self.module_dir is not None:
            lines += [f"QEMU_MODULE_DIR={shlex.quote(str(self.module_dir))}",
                      "export QEMU_MODULE_DIR"]
        lines.append(" ".join(["exec", shlex.quote(str(self.emulator)),
                               *map(shlex.quote, self.emulator_args()), '"$@"']))
        text = "\n".join(lines) + "\n"
        wrapper = self.root / LIBVIRT_WRAPPER
        if not wrapper.is_file() or wrapper.read_text() != text:
            trust.write_atomic(wrapper, text, mode=0o755)   # libvirt's QEMU user runs it
        return wrapper

    def emulator_args(self) -> list[str]:
        """Arguments every VM of this build gets (``-L`` for each data dir)."""
        return [a for d in self.data_dirs for a in ("-L", str(d))]

    # -- what it is ---------------------------------------------------------------------
    def probe_version(self) -> str:
        """``qemu-system-x86_64 --version`` -> ``10.0.2`` (Debian's suffix dropped).

        :raise BadInput: the binary is not a QEMU emulator.
        """
        try:
            out = _proc.run([self.emulator, "--version"], timeout=30)
        except (ToolError, OSError) as err:
            raise BadInput(f"{self.emulator} is not a QEMU binary ({err})") from err
        m = _VERSION_RE.search(out)
        if not m:
            raise BadInput(f"{self.emulator} is not a QEMU binary (its --version says "
                           f"{out.strip().splitlines()[0] if out.strip() else 'nothing'!r})")
        return m.group(1).split("(")[0]

    @cached_property
    def version(self) -> str:
        return self.probe_version()

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", self.version)[:3])

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` keeps of the build itself: name, version and paths (its
        capabilities are added by :func:`kvmlab.vm.qemu_probe.recorded`, which asks QEMU)."""
        return {"name": self.name, "version": self.version, "emulator": str(self.emulator),
                "data_dirs": [str(d) for d in self.data_dirs],
                "module_dir": str(self.module_dir) if self.module_dir else None}


def load_build(name: str) -> QemuBuild:
    """The installed build *name* (``data/qemu/<name>``)."""
    root = builds_dir() / name
    meta = json.loads((root / BUILD_FILE).read_text())
    return QemuBuild.from_prefix(str(meta.get("name", name)), root / "prefix", root=root)


def resolve(qemu: str | Path | QemuBuild | None = None) -> QemuBuild:
    """The build ``qemu=`` names: a build name (``system``, ``10.0``), a path to a QEMU
    binary, or a build; None is the current one (:func:`current`).

    :raise BadInput: unknown name, or a path that is not a QEMU binary (the message lists
        the builds there are).
    """
    if isinstance(qemu, QemuBuild):
        return qemu
    if qemu is None:
        return current()
    text = str(qemu)
    if text == SYSTEM:
        return QemuBuild.system()
    if text in installed_names():
        return load_build(text)
    if "/" in text or isinstance(qemu, Path):
        path = Path(text)
        if path.is_file() and os.access(path, os.X_OK):
            build = QemuBuild.from_binary(path.resolve())
            try:
                build.version    # noqa: B018 - raises BadInput if it is not QEMU
            except BadInput as err:
                raise BadInput(f"qemu={text!r} is not a QEMU binary; builds: "
                               f"{', '.join(names())}") from err
            return build
        raise BadInput(f"qemu={text!r}: no such executable; builds: {', '.join(names())}")
    raise BadInput(f"qemu={text!r} is not a QEMU build here; builds: {', '.join(names())} "
                   "(or a path to a qemu-system-x86_64; 'kvmlab qemu add 10.0' installs 10.0)")


def check_name(qemu: object) -> str:
    """Validate a ``qemu=`` value without running it (for options): its text."""
    if isinstance(qemu, QemuBuild):
        return qemu.name
    if isinstance(qemu, float) and not isinstance(qemu, bool):
        qemu = str(qemu)          # a YAML-parsed "-p qemu 10.0" or "--grid qemu=system,10.0"
    if not isinstance(qemu, (str, Path)) or not str(qemu):
        raise BadInput(f"qemu={qemu!r} must be a build name ({', '.join(names())}) or a path")
    text = str(qemu)
    if text in names():
        return text
    resolve(text)       # a path: checked; anything else raises with the list
    return text


_CURRENT: contextvars.ContextVar[QemuBuild | None] = contextvars.ContextVar(
    "kvmlab_qemu_build", default=None)


def current() -> QemuBuild:
    """The build QEMU programs run from now: the one set by :func:`using`, else ``system``."""
    return _CURRENT.get() or QemuBuild.system()


@contextmanager
def using(qemu: str | Path | QemuBuild | None) -> Iterator[QemuBuild]:
    """Run the block with *qemu*'s programs (images, NBD server, VMs)."""
    build = resolve(qemu)
    token = _CURRENT.set(build)
    try:
        yield build
    finally:
        _CURRENT.reset(token)


def tool(program: str) -> str:
    """*program* of the current build (what ``images`` and the faults run)."""
    return current().tool(program)
