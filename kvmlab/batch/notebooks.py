"""Notebook runs through papermill: one run = one folder with the executed notebook,
its HTML export and the run's data.  (Sweeps build on :func:`run_notebook`.)"""

from __future__ import annotations

import ast
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
import papermill as pm
from nbconvert import HTMLExporter
from papermill.engines import NBClientEngine, papermill_engines

from kvmlab import paths, trust
from kvmlab.errors import BadInput, KvmlabError, NoSpace
from kvmlab.experiments.checks import check_values
from kvmlab.store.runs import RESERVES, mark_failed, new_run_id
from kvmlab.store.tmpdirs import owned_tmpdir

log = logging.getLogger(__name__)

#: The parameter through which a notebook is told which folder its run goes to.
RUN_PATH_PARAM = "run_path"


#: the kernel module kvmlab runs notebooks with (:mod:`kvmlab.batch.kernel`)
KERNEL_MODULE = "kvmlab.batch.kernel"


def ipc_kernel_manager(folder: Path, started: list[Any] | None = None) -> type:
    """A kernel manager whose kernel talks over unix sockets in *folder* (a private 0700
    dir): no TCP port, so no plain-text transport and no warning about it on every run.
    Its connection file goes there too (not a stray ``/tmp/tmp*.json`` if we are killed).
    Each manager appends itself to *started* once its kernel runs."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, Unicode

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc")
        ip = Unicode(str(folder / "kernel"))
        connection_file = Unicode(str(folder / "kernel.json"))

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            # the kernel process's own stderr (ipykernel's log, and its races at shutdown
            # such as "Socket operation on non-socket") goes to a log in the private dir,
            # not the user's terminal: cells' output reaches the notebook through the
            # kernel's channels, and a failure is said in one line
            with open(folder / "kernel.log", "ab") as log_fh:
                kw.setdefault("stderr", log_fh)
                await super()._async_launch_kernel(kernel_cmd, **kw)

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts every kernel before shutting it down; ours is idle
            # then (papermill ran every cell), and the SIGINT only makes it log
            # "KeyboardInterrupt caught in kernel" after a run that went well
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            # ipykernel's launcher still binds a TCP port (its fork pipe): ours does not
            return [KERNEL_MODULE if arg == "ipykernel_launcher" else arg
                    for arg in super().format_kernel_cmd(extra_arguments)]

        async def _async_post_start_kernel(self, **kw: Any) -> None:
            await super()._async_post_start_kernel(**kw)
            if started is not None:
                started.append(self)

    return IPCKernelManager


class Execution:
    """One notebook execution as seen from outside: which code cell runs, the kernel, and
    a stop request (Ctrl-C or SIGTERM to us).

    A stop interrupts the kernel's running cell (SIGINT to its process group: the cell gets
    ``KeyboardInterrupt``, so its experiment stops QEMU, removes its scratch images and
    finishes its run as ``interrupted``) and lets no further cell start.  A second stop
    abandons the kernel at once (the next launch reaps what it leaves).
    """

    def __init__(self) -> None:
        self.cell: tuple[int, int] | None = None
        self.kernels: list[Any] = []
        self.stopped: int | None = None          # the signal that stopped us

    def request_stop(self, signum: int) -> None:
        if self.stopped is not None:
            raise KeyboardInterrupt
        self.stopped = signum
        for km in self.kernels:
            pid = getattr(km.provisioner, "pid", None) if km.provisioner else None
            if pid:
                try:
                    os.killpg(pid, signal.SIGINT)     # the kernel leads its own session
                except ProcessLookupError:
                    pass

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the execution (see the class) while in the block; in
        the main thread only (elsewhere signals are not ours to handle)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, lambda signum, _frame: self.request_stop(signum))
               for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


class WatchedEngine(NBClientEngine):  # type: ignore[misc]
    """papermill's nbclient engine, telling its :class:`Execution` (engine keyword
    ``execution``) each code cell it starts, and refusing to start one after a stop."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        execution: Execution = kwargs.pop("execution")
        code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
        cell_start = nb_man.cell_start

        def start(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
            if execution.stopped is not None:
                raise KeyboardInterrupt
            if cell_index in code:
                execution.cell = (code.index(cell_index) + 1, len(code))
            cell_start(cell, cell_index, **kw)

        nb_man.cell_start = start
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


ENGINE = "kvmlab"
papermill_engines.register(ENGINE, WatchedEngine)


class NotebookFailed(KvmlabError):
    """The notebook raised; the executed notebook (with the traceback) is kept."""


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The notebook's ``parameters`` cell as papermill infers it: name -> {default, type}."""
    nb = Path(notebook)
    if not nb.is_file():
        raise BadInput(f"notebook {nb} does not exist")
    try:
        found = pm.inspect_notebook(str(nb))
    except Exception as err:  # noqa: BLE001 - nbformat and papermill raise many kinds
        raise BadInput(f"{nb} is not a Jupyter notebook ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return {name: dict(p) for name, p in found.items()}


def _default(spec: dict[str, Any]) -> Any:
    try:
        return ast.literal_eval(str(spec.get("default")))
    except (ValueError, SyntaxError):
        return None


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

#: the parameter types a notebook's parameters cell may declare, and what each accepts
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,),
                                       "bool": (bool,), "list": (list,), "dict": (dict,)}


def _type_ok(value: Any, type_name: str, default: Any) -> bool:
    """Is *value* acceptable for a parameter declared ``type_name`` (``int``,
    ``Optional[str]``...; without a declared type, the default's type decides)?"""
    optional = type_name.startswith("Optional[")
    base = type_name[len("Optional["):-1] if optional else type_name
    if value is None:
        return optional or default is None
    accepted = _TYPES.get(base)
    if accepted is None:                       # undeclared: judge by the default
        if default is None:
            return True
        accepted = (int, float) if isinstance(default, float) else (type(default),)
    if isinstance(value, bool) and bool not in accepted:
        return False
    return isinstance(value, accepted)


def check_parameters(notebook: str | Path, params: dict[str, Any]) -> None:
    """Reject names the notebook's parameters cell does not define, values whose type
    does not match the declared one, and values kvmlab knows to be wrong
    (:func:`~kvmlab.experiments.checks.check_values`), before anything runs.  A decimal
    number (``10.0``, ``65536``) given for a parameter declared ``str`` becomes its text, in
    *params*."""
    known = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise BadInput(f"unknown parameter(s) {', '.join(unknown)} for {Path(notebook).name} "
                       f"(known: {', '.join(sorted(known))})")
    for name, value in params.items():
        spec = known[name]
        default = _default(spec)
        type_name = str(spec.get("inferred_type_name") or "None")
        if type_name in ("float", "Optional[float]") and isinstance(value, str) and \
                _FLOAT.fullmatch(value.strip()):
            # YAML 1.1 reads "1e308" (no dot) as text: for a float parameter it is a number
            params[name] = value = float(value)
        if type_name == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
            # "-p qemu 10.0", "--grid qemu=system,10.0", "-p speeds 4194304": YAML read a
            # number where the notebook declares text (a version, a list of one); the
            # notebook gets the text
            params[name] = value = str(value)
        if not _type_ok(value, type_name, default):
            shown = type_name if type_name != "None" else type(default).__name__
            raise BadInput(f"parameter {name}={value!r} should be {shown} "
                           f"like its default {default!r}")
    check_values({**{k: _default(v) for k, v in known.items()}, **params})


def run_path_folder(given: Any) -> Path:
    """The run folder a ``run_path`` parameter names: an absolute path as it is; a relative
    one inside the runs folder, which it may not leave (``../../elsewhere`` is refused).

    :raise BadInput: not text, or a relative path that leaves the runs folder.
    """
    if not isinstance(given, str) or not given.strip():
        raise BadInput(f"{RUN_PATH_PARAM}={given!r} must be a folder path")
    path = Path(given)
    if path.is_absolute():
        return path.resolve()
    runs = paths.runs_dir().resolve()
    folder = (runs / path).resolve()
    if not folder.is_relative_to(runs) or folder == runs:
        raise BadInput(f"{RUN_PATH_PARAM}={given!r} leaves the runs folder {runs}; give an "
                       "absolute path to record elsewhere")
    return folder


def execute(notebook: Path, executed: Path, params: dict[str, Any], *, cwd: Path,
            kernel: str = "python3", progress: bool = False,
            execution: Execution | None = None) -> None:
    """papermill's run of *notebook* into *executed*, its kernel on unix sockets in a
    private temp dir (:func:`ipc_kernel_manager`), removed afterwards.

    :raise papermill.PapermillExecutionError: a cell raised.
    """
    execution = execution or Execution()
    sockets = owned_tmpdir("kvmlab-kernel-")
    try:
        pm.execute_notebook(str(notebook), str(executed), parameters=params,
                            kernel_name=kernel, progress_bar=progress, cwd=str(cwd),
                            engine_name=ENGINE, execution=execution,
                            kernel_manager_class=ipc_kernel_manager(sockets, execution.kernels))
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def export_html(executed: Path) -> Path:
    """nbconvert's HTML export of *executed*, next to it: written whole or not at all.

    :raise NoSpace: the disk is full (no cut-off file is left).
    """
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    out = executed.with_suffix(".html")
    with trust.writing(out.parent, "the HTML export"):
        trust.write_atomic(out, body)
    return out


def _record_no_space(folder: Path, reserve: trust.Reserve, err: NoSpace) -> None:
    """A full disk under a notebook run: its runs end as ``failed`` with *err*, written in
    the room *reserve* kept."""
    reserve.release()
    try:
        mark_failed(folder, str(err))
    except KvmlabError:
        log.warning("could not record the failure in %s", folder)


def run_notebook(notebook: str | Path, params: dict[str, Any] | None = None, *,
                 out: str | Path | None = None, kernel: str = "python3",
                 progress: bool = False, execution: Execution | None = None,
                 on_folder: Callable[[Path], None] | None = None) -> Path:
    """Execute *notebook* with papermill into a run folder and export it to HTML.

    The folder (default ``data/runs/<run-id>/``, or *out*) receives
    ``<name>.ipynb``, ``<name>.html`` and the run's data: the notebook gets
    ``run_path`` pointing there.  Returns the folder.

    *execution* is told the cell being run, and SIGINT/SIGTERM stop the run cleanly
    (see :class:`Execution`); *on_folder* is called with the folder before the notebook
    starts (to follow it).

    :raise BadInput: unknown notebook or parameter; nothing is created.
    :raise NotebookFailed: a cell raised (the executed notebook and HTML are kept).
    :raise KeyboardInterrupt: stopped by SIGINT or SIGTERM (what ran is kept).
    """
    nb = Path(notebook)
    params = dict(params or {})
    check_parameters(nb, params)
    known = notebook_parameters(nb)
    given = params.get(RUN_PATH_PARAM)
    if given is not None:
        folder = run_path_folder(given)
        if out is not None and Path(out).resolve() != folder:
            raise BadInput(f"both --out {out} and {RUN_PATH_PARAM}={given} given: choose one")
        params[RUN_PATH_PARAM] = str(folder)
    elif out is not None:
        folder = Path(out).resolve()
    else:
        folder = paths.runs_dir() / new_run_id(nb.stem)
    if folder.exists() and any(folder.iterdir()):
        raise BadInput(f"output folder {folder} is not empty")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        reserve = trust.Reserve(folder, RESERVES[1])    # room for the runs' last word
    except NoSpace:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if RUN_PATH_PARAM in known:
        params.setdefault(RUN_PATH_PARAM, str(folder))
    executed = folder / nb.name
    execution = execution or Execution()
    failure: BaseException | None = None
    try:
        if on_folder is not None:
            on_folder(folder)
        with execution.stop_on_signals(), trust.writing(folder, "the executed notebook"):
            execute(nb, executed, params, cwd=nb.resolve().parent, kernel=kernel,
                    progress=progress, execution=execution)
    except pm.PapermillExecutionError as err:
        failure = KeyboardInterrupt() if execution.stopped is not None else NotebookFailed(
            f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}")
        failure.__cause__ = err
    except NoSpace as err:
        failure = err
        _record_no_space(folder, reserve, err)
    except BaseException:
        reserve.release()
        raise
    try:
        if executed.exists() and not isinstance(failure, NoSpace):   # else it is cut off
            export_html(executed)
    except NoSpace as err:
        _record_no_space(folder, reserve, err)
        if not isinstance(failure, NoSpace):
            failure = err
    except Exception:  # noqa: BLE001 - the notebook itself is the record
        log.warning("HTML export of %s failed", executed, exc_info=True)
    finally:
        reserve.release()
    if failure is not None:
        raise failure
    return folder
