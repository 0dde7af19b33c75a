"""The ``kvmlab`` command: thin click commands that call the library."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import yaml

from kvmlab import trust
from kvmlab.errors import BadInput, KvmlabError, NoSpace
from kvmlab.units import with_unit


def _fail(err: KvmlabError) -> None:
    click.echo(f"kvmlab: error: {err}", err=True)
    sys.exit(2)


@contextmanager
def _one_line_errors(interrupted: str) -> Iterator[None]:
    """kvmlab's errors as one line and exit 2; Ctrl-C as one line (*interrupted* says what
    is left) and exit 130."""
    try:
        yield
    except KvmlabError as err:
        _fail(err)
    except KeyboardInterrupt:
        click.echo(f"kvmlab: interrupted; {interrupted}", err=True)
        sys.exit(130)


@click.group()
@click.version_option(package_name="kvmlab")
def main() -> None:
    """Reproducible QEMU block-mirror experiments."""
    with _one_line_errors("nothing was done"):
        trust.private_umask()             # runs, scratch and logs are ours alone
    _warnings_as_lines()
    _no_iri_grammar()


def _no_iri_grammar() -> None:
    """Keep jsonschema (under papermill, nbformat and nbconvert) from importing
    ``rfc3987_syntax``, which compiles an IRI grammar with lark at import: about 1.3 s of
    CPU in every kvmlab process that reads a notebook, and a sweep starts one per point.
    jsonschema imports it under ``suppress(ImportError)`` for its 'iri' format checker
    alone; a notebook's schema checks no IRI.  (``None`` in ``sys.modules`` makes that
    import fail, the standard way.)  Only the command's own process: a library user's
    interpreter is left as it is."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"kvmlab: warning: {record.getMessage()}"


def _warnings_as_lines() -> None:
    """kvmlab's warnings (a folder left alone, a failed export) reach the user as one line
    each on stderr, not a library's silent NullHandler."""
    logger = logging.getLogger("kvmlab")
    if not any(getattr(h, "_kvmlab_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(_OneLine())
        handler._kvmlab_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


@main.group()
def guest() -> None:
    """The lab guest (kernel + busybox initramfs)."""


@guest.command("build")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the guest (default data/guest).")
@click.option("--kernel", type=click.Path(path_type=Path), default=None,
              help="Use this kernel image instead of Debian's cloud kernel.")
@click.option("--modules", type=click.Path(path_type=Path), default=None,
              help="That kernel's lib/modules/<version> folder (with modules.dep).")
@click.option("--force", is_flag=True, help="Rebuild even if a guest is there.")
def guest_build(out: Path | None, kernel: Path | None, modules: Path | None, force: bool) -> None:
    """Build the guest into data/guest (idempotent)."""
    from kvmlab.guest.build import build_guest
    with _one_line_errors("the guest as it was is kept"):
        g = build_guest(out, kernel=kernel, modules=modules, force=force)
    click.echo(f"guest: {g.kernel.parent} (kernel {g.kernel_version})")


def _parse_params(pairs: tuple[tuple[str, str], ...], files: tuple[Path, ...]) -> dict[str, Any]:
    """Parameters from YAML files, then ``-p NAME VALUE`` pairs (values parsed as YAML).

    :raise BadInput: a file that cannot be read, or YAML that does not parse (one line).
    """
    params: dict[str, Any] = {}
    for f in files:
        try:
            loaded = yaml.safe_load(Path(f).read_text()) or {}
        except OSError as err:
            raise BadInput(f"cannot read parameters file {f}: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise BadInput(f"parameters file {f} is not valid YAML: "
                           f"{str(err).splitlines()[0]}") from err
        if not isinstance(loaded, dict):
            raise BadInput(f"parameters file {f} must hold a mapping of parameters")
        params.update(loaded)
    for name, raw in pairs:
        try:
            params[name] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise BadInput(f"-p {name} {raw!r}: not a valid YAML value "
                           f"({str(err).splitlines()[0]})") from err
    return params


@main.command("run")
@click.argument("notebook", type=click.Path(path_type=Path))
@click.option("-p", "--param", "pairs", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A parameter (value parsed as YAML).")
@click.option("-f", "--params-file", "files", multiple=True, type=click.Path(path_type=Path),
              help="YAML file of parameters.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder (default data/runs/<run-id>).")
def run_cmd(notebook: Path, pairs: tuple[tuple[str, str], ...], files: tuple[Path, ...],
            out: Path | None) -> None:
    """Execute NOTEBOOK with papermill into a run folder (notebook, HTML, data).

    While it runs: a live line (cell, job state, offset/len, copy rate, ETA) and a line per
    step or job event; then PASS or FAIL per run and the run folder.  Exit status 0 on
    PASS, 1 on FAIL, 2 on bad input, 130 when interrupted (Ctrl-C or SIGTERM: the running
    cell is interrupted, so its experiment stops QEMU and cleans up first).
    """
    from tqdm import tqdm

    from kvmlab.batch.notebooks import Execution, NotebookFailed, run_notebook
    from kvmlab.batch.watch import RunWatcher, outcome

    execution = Execution()
    tty = sys.stderr.isatty()
    # on a terminal one line rewritten in place; in a log, the line each time it changes
    bar = tqdm(total=0, bar_format="{desc}", file=sys.stderr, dynamic_ncols=True,
               mininterval=0, disable=not tty)
    last = [""]

    def show(line: str) -> None:
        if tty:
            bar.set_description_str(line)
        elif line != last[0]:
            click.echo(line, err=True)
        last[0] = line

    started: list[RunWatcher] = []

    def follow(folder: Path) -> None:
        click.echo(f"run folder: {folder}")
        watcher = RunWatcher(folder, show=show, log=lambda s: tqdm.write(s, file=sys.stderr),
                             cell=lambda: execution.cell)
        started.append(watcher.__enter__())

    error = None
    try:
        run_notebook(notebook, _parse_params(pairs, files), out=out, execution=execution,
                     on_folder=follow)
    except NotebookFailed as err:
        error = str(err)
    except NoSpace as err:
        _stop_watching(started, bar)
        if not started:                           # nothing was made
            click.echo(f"kvmlab: error: {err}", err=True)
            sys.exit(1)
        click.echo(f"FAIL: {started[0].folder}: {err}")
        sys.exit(1)
    except KvmlabError as err:
        _stop_watching(started, bar)
        _fail(err)
    except KeyboardInterrupt:
        _stop_watching(started, bar)
        click.echo("kvmlab: interrupted" + (" (SIGTERM)" if execution.stopped ==
                                            signal.SIGTERM else ""), err=True)
        sys.exit(130)
    _stop_watching(started, bar)
    folder = started[0].folder                     # on_folder ran before the notebook
    result = outcome(folder, error)
    for line in result.lines:
        click.echo(line)
    click.echo(f"{result.label}: {folder}")
    sys.exit(0 if result.passed else 1)


def _stop_watching(watchers: list[Any], bar: Any) -> None:
    for w in watchers:
        w.__exit__(None, None, None)
    bar.close()


@main.group("qemu")
def qemu_group() -> None:
    """QEMU builds: the system's and others installed beside it (data/qemu)."""


@qemu_group.command("list")
def qemu_list() -> None:
    """The builds qemu= accepts, their versions and mirror capabilities."""
    from kvmlab.qemu import builds
    from kvmlab.vm import qemu_probe
    with _one_line_errors("nothing was changed"):
        for name in builds.names():
            b = builds.resolve(name)
            c = qemu_probe.capabilities(b)
            click.echo(f"{name:8} QEMU {c.version:8} copy modes: {'/'.join(c.copy_modes)}; "
                       f"block-job-change: {'yes' if c.block_job_change else 'no'}; "
                       f"actively-synced: {'yes' if c.actively_synced else 'no'}  {b.emulator}")


@qemu_group.command("add")
@click.argument("version")
def qemu_add(version: str) -> None:
    """Install QEMU VERSION (e.g. 10.0) from Debian's backports into data/qemu/VERSION."""
    from kvmlab.qemu.install import add
    from kvmlab.vm import qemu_probe
    with _one_line_errors("nothing was installed"):
        build = add(version, say=lambda line: click.echo(line, err=True))
        caps = qemu_probe.capabilities(build)
    click.echo(f"{build.name}: QEMU {caps.version} at {build.emulator}")


@qemu_group.command("remove")
@click.argument("name")
def qemu_remove(name: str) -> None:
    """Remove the installed build NAME (never the system's QEMU)."""
    from kvmlab.qemu.install import remove
    with _one_line_errors("the build may be partly removed; run the same command again"):
        remove(name, say=click.echo)


@main.command("sweep")
@click.argument("notebook", type=click.Path(path_type=Path), required=False)
@click.option("--grid", "grids", multiple=True, metavar="NAME=V1,V2,...",
              help="A parameter and its values (values parsed as YAML); repeatable.")
@click.option("-p", "--param", "pairs", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A fixed parameter for every point.")
@click.option("-f", "--file", "sweep_file", type=click.Path(path_type=Path), default=None,
              help="Sweep YAML: notebook, params, grid or points, repeat.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Points run in parallel on this machine.")
@click.option("--repeat", type=int, default=None, help="Runs per point.")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS",
              help="Submit points to this Dask scheduler instead.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Sweep folder (default data/sweeps/<notebook>-<time>); re-use to resume.")
@click.option("--no-report", is_flag=True, help="Skip the report notebook.")
def sweep_cmd(notebook: Path | None, grids: tuple[str, ...], pairs: tuple[tuple[str, str], ...],
              sweep_file: Path | None, workers: int, repeat: int | None,
              dask_address: str | None, out: Path | None, no_report: bool) -> None:
    """Run NOTEBOOK over a parameter grid (each point one papermill run), then report."""
    from kvmlab.batch.sweep import SweepSpec, parse_grid, run_sweep
    with _one_line_errors("finished points are kept, run the same command again to resume"):
        if sweep_file is not None:
            spec = SweepSpec.from_yaml(sweep_file, notebook)
        elif notebook is not None:
            spec = SweepSpec(notebook.resolve())
        else:
            raise BadInput("give a NOTEBOOK or a sweep file (-f)")
        if not spec.notebook.is_file():
            raise BadInput(f"notebook {spec.notebook} does not exist")
        spec.params.update(_parse_params(pairs, ()))
        if grids:
            spec.grid.update(parse_grid(grids))
        if repeat is not None:
            spec.repeat = repeat
        folder = run_sweep(spec, out, workers=workers, dask=dask_address,
                           report=not no_report)
    from kvmlab.batch.sweep import outcome
    done, failed = outcome(folder)
    click.echo(f"sweep folder: {folder}")
    results = folder / "results.csv"
    if results.exists():
        click.echo(f"results: {results}")
    click.echo(f"{done} done, {len(failed)} failed")
    for name, error in failed:
        click.echo(f"  FAILED {name}: {error}")
    if failed:
        sys.exit(1)


def run_folders(folder: Path) -> list[Path]:
    """*folder* if it is a run, else the runs in its sub-folders (a notebook that recorded
    several runs, such as 04_pivot, keeps each in a sub-folder)."""
    if (folder / "run.json").is_file():
        return [folder]
    subs = sorted(p.parent for p in folder.glob("*/run.json"))
    if not subs:
        raise BadInput(f"{folder} is not a kvmlab run folder (no run.json in it or in its "
                       "sub-folders)")
    return subs


@main.command("analyze")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--plots/--no-plots", default=True, help="Write dashboard.png and panels.")
@click.option("--stall-min", type=float, default=2.0, show_default=True,
              help="Shortest stall (s).")
@click.option("--log", "log_scale", is_flag=True, help="Remaining bytes on a log scale.")
def analyze_cmd(run_dir: Path, plots: bool, stall_min: float, log_scale: bool) -> None:
    """Summarize a saved run, or each run under RUN_DIR (convergence, rates, stalls), and
    plot it."""
    import matplotlib
    matplotlib.use("Agg")
    from kvmlab import analysis
    from kvmlab import plots as plotting
    from kvmlab.store.runs import load_run
    with _one_line_errors("nothing was written"):
        folders = run_folders(run_dir)
        runs = [load_run(f) for f in folders]
        rows = [analysis.summarize(run, stall_min=stall_min) for run in runs]
    for run, row in zip(runs, rows, strict=True):
        if len(runs) > 1:
            click.echo(f"== {run.path.name} ({run.meta.get('experiment', '?')})")
        width = max(len(k) for k in row)
        for key, value in row.items():
            click.echo(f"{key:<{width}}  {with_unit(key, value)}")
        if plots:
            names = plotting.save_all(run, log=log_scale)
            click.echo(f"dashboard: {run.path / 'dashboard.png'} (and {', '.join(names[1:])})")


@main.command("report")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The HTML document to write (figures embedded).")
@click.option("--pdf", type=click.Path(path_type=Path), default=None,
              help="Also print it to this PDF (headless Chromium).")
@click.option("--title", default=None, help="The document's title.")
@click.option("--template", type=click.Path(path_type=Path), default=None,
              help="A Jinja template to use instead of kvmlab/report/templates/report.html.j2.")
def report_cmd(inputs: tuple[Path, ...], out: Path, pdf: Path | None, title: str | None,
               template: Path | None) -> None:
    """Turn run folders, notebook run folders and sweep folders (INPUTS) into one
    document to share: no code, the question, setup, verdict, figures and tables of
    each, and a provenance appendix."""
    import matplotlib
    matplotlib.use("Agg")
    from kvmlab.report.document import make_report
    with _one_line_errors("no partial document left"):
        make_report(inputs, out, pdf=pdf, title=title, template=template,
                    progress=lambda line: click.echo(line, err=True))
    click.echo(f"report: {Path(out).resolve()}" + (f" and {Path(pdf).resolve()}" if pdf
                                                      else ""))


@main.command("seed")
@click.option("--qemu", default="system", show_default=True, metavar="BUILD,...",
              help="The QEMU builds to run on, comma-separated (see kvmlab qemu list).")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Runs side by side (each its own QEMU).")
@click.option("--size", type=click.Choice(["full", "small"]), default="full",
              show_default=True, help="Guest disk sizes (small: a quick check).")
@click.option("--only", default=None, metavar="CASE,...",
              help="Only these cases of the suite (E1, E2 stop, ..., C2/3 none).")
@click.option("--accel", default="auto", show_default=True,
              help="auto (KVM if a guest really boots under it, else TCG), kvm or tcg.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The folder (default data/seed/<time>); re-use it to resume.")
@click.option("--pdf", type=click.Path(path_type=Path), default=None,
              help="Also print the lab note to this PDF.")
def seed_cmd(qemu: str, workers: int, size: str, only: str | None, accel: str,
             out: Path | None, pdf: Path | None) -> None:
    """Run the seed's experiments (E1-E7, both outage modes, paused and running pivots,
    the consistency study) on each QEMU build, and write the lab note, reproduced: each
    of the seed's claims beside what kvmlab measured, agree or disagree."""
    import matplotlib
    matplotlib.use("Agg")
    from kvmlab.seed import run_seed
    with _one_line_errors("finished runs are kept, run the same command with --out to "
                          "resume"):
        result = run_seed(qemu, out, workers=workers, size=size, cases=only, accel=accel,
                          pdf=pdf, say=lambda line: click.echo(line, err=True))
    click.echo(f"lab note: {result.note}" + (f" and {result.pdf}" if result.pdf else ""))
    for name, error in result.failed:
        click.echo(f"  FAILED {name}: {error}")
    if result.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
