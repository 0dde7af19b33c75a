"""Write-ups: runs, notebook runs and sweeps turned into one document to share.

``kvmlab report RUN_OR_SWEEP... --out report.html [--pdf report.pdf]`` reads each folder
(:func:`read_input` tells the kinds apart), builds a :class:`Section` per folder, and
renders them with a Jinja template the user can copy and edit (``--template``; the
default is ``kvmlab/report/templates/report.html.j2``).  Code is never shown: a run becomes
its question, its setup in words, its verdict, its figures (the dashboard: progress,
convergence, stalls and, where traced, their causes) and a table with units; a notebook
run becomes its outputs (nbconvert, inputs excluded); a sweep its results table and a
figure.  Figures are PNGs embedded in the file, so the HTML travels alone.  A provenance
appendix lists parameters, versions, git revision, host, run ids and the raw data's paths.

The PDF is the HTML printed by Debian's headless Chromium: no renderer of our own.
Nothing is written until every input has been read: bad input is one line, no file.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import matplotlib.pyplot
import pandas as pd

from kvmlab import analysis, plots, trust
from kvmlab.analysis import causes
from kvmlab.errors import BadInput, KvmlabError
from kvmlab.experiments.snapshot_methods import summary as method_summary
from kvmlab.report import labnote
from kvmlab.store.runs import load_run
from kvmlab.store.sweepdir import read_points
from kvmlab.units import MIB, with_unit

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
KINDS = ("run", "notebook", "sweep", "seed")


class ReportError(KvmlabError):
    """The document could not be made (Chromium failed to print, a template error)."""


@dataclass
class Figure:
    """One embedded figure: caption and PNG bytes as a data URI."""

    caption: str
    uri: str


@dataclass
class Section:
    """One input folder, ready for the template."""

    kind: str
    title: str
    path: Path
    question: str = ""
    setup: list[str] = field(default_factory=list)
    verdict: str = ""
    passed: bool | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""                      # a notebook's outputs, as HTML
    provenance: dict[str, Any] = field(default_factory=dict)
    badge: str = ""                     # shown instead of PASS/FAIL ("AGREES")


# -- what each input is --------------------------------------------------------------------
def kind_of(folder: Path) -> str:
    """``run`` (a ``run.json``), ``sweep`` (a ``sweep.json``) or ``notebook`` (an executed
    notebook from ``kvmlab run``).  :raise BadInput: none of them (one line)."""
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder (give run, notebook run or sweep folders)")
    if (folder / "run.json").is_file():
        return "run"
    if (folder / "sweep.json").is_file():
        return "seed" if _seed_builds(folder) else "sweep"
    if any(folder.glob("*.ipynb")):
        return "notebook"
    raise BadInput(f"{folder} is not a run, notebook run or sweep folder (no run.json, "
                   "sweep.json or executed notebook in it)")


def check_output(path: Path, suffix: str, creates: Path | None = None) -> Path:
    """*path* can be written: its folder exists and is writable (or lies inside *creates*,
    a folder the command makes itself, whose nearest existing parent is writable), it is
    not a folder, and it ends in *suffix*.  Checked before any work, so a bad path writes
    nothing (and nothing is created to check it)."""
    path = Path(path).expanduser().resolve()
    if path.suffix.lower() != suffix:
        raise BadInput(f"{path} must end in {suffix}")
    if path.is_dir():
        raise BadInput(f"{path} is a folder, not a file to write")
    probe = path.parent
    made = creates.expanduser().resolve() if creates is not None else None
    if not probe.is_dir() and made is not None and probe.is_relative_to(made):
        probe = next(p for p in (probe, *probe.parents) if p.exists())   # made later
    if not probe.is_dir():
        raise BadInput(f"cannot write {path}: folder {path.parent} does not exist")
    try:                        # the real test (root passes os.access on a read-only fs)
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", dir=probe):
            pass
    except OSError as err:
        raise BadInput(f"cannot write {path}: {err.strerror}") from err
    return path


# -- sections --------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    """*fig* as an embedded image (a data: URL), released from pyplot."""
    return "data:image/png;base64," + base64.b64encode(plots.png(fig, 80, close=True)).decode()


def _question(experiment: str) -> str:
    """The experiment's question: the first paragraph of its module's docstring."""
    from kvmlab import experiments
    fn = getattr(experiments, experiment, None)
    doc = sys.modules[fn.__module__].__doc__ if fn is not None else None
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _setup(meta: dict[str, Any]) -> list[str]:
    """The run's setup in words: QEMU build, accelerator, images, workload, speed."""
    p = meta.get("params") or {}
    prov = meta.get("provenance") or {}
    qemu = (meta.get("qemu") or {}).get("version") or prov.get("qemu_version") or "QEMU"
    out = [f"{qemu} ({p.get('qemu', 'system')} build), {meta.get('accel', '?')} accelerator, "
           f"{meta.get('backend', p.get('backend', 'qmp'))} backend, cache={p.get('cache', '?')}"]
    if "image_mib" in p:
        out.append(f"guest disk {p['image_mib']} MiB with {p.get('fill_mib', 0)} MiB of data")
    if p.get("workload_kib"):
        out.append(f"guest writes {p['workload_kib']} KiB per dd at "
                   f"{p.get('workload_rate_kib_s', '?')} KiB/s asked")
    if "speed" in p:
        out.append(f"mirror speed limit: {with_unit('speed', p['speed'])}")
    if p.get("slow_target_bps"):
        bps = with_unit("slow_target_bps", p["slow_target_bps"])
        out.append(f"slow target: an NBD export taking {bps}")
    extra = {k: v for k, v in p.items() if v and k in ("copy_mode", "sync", "fault", "outage",
                                                       "strategy", "on_target_error",
                                                       "buf_size", "granularity")}
    if extra:
        out.append(", ".join(f"{k} {with_unit(k, v)}" for k, v in extra.items()))
    return out


#: the summary's measures shown for a run
RUN_MEASURES = {"time_to_ready_s": "time to ready", "job_duration_s": "job duration",
                "bytes_copied": "copied", "image_bytes": "image",
                "copy_ratio": "copied / image", "mean_copy_rate": "mean copy rate",
                "mean_dirty_rate": "mean dirty rate", "guest_write_rate": "guest write rate",
                "stall_count": "stalls", "stall_time_s": "time stalled",
                "paused_time_s": "time paused"}


def _table(rows: Iterable[tuple[str, str]]) -> str:
    """Measure and value (with its unit, :func:`kvmlab.units.with_unit`) as an HTML table."""
    df = pd.DataFrame(list(rows), columns=["measure", "value"])
    return str(df.to_html(index=False, border=0, classes="measures"))


def _verdict_text(verdict: dict[str, Any]) -> str:
    keep = {k: v for k, v in verdict.items()
            if not isinstance(v, (dict, list)) and k != "pass" and v is not None}
    return "; ".join(f"{k.replace('_', ' ')}: {with_unit(k, v)}" for k, v in keep.items())


def run_section(folder: Path) -> Section:
    """A recorded run: question, setup, verdict, the dashboard and the measures."""
    run = load_run(folder)
    meta = run.meta
    exp = str(meta.get("experiment", folder.name))
    verdict = meta.get("verdict") or {}
    running = meta.get("status") == "running"     # still being written: not judged yet
    sec = Section("run", exp.replace("_", " "), folder, question=_question(exp),
                  setup=_setup(meta), verdict=_verdict_text(verdict) or
                  ("the run is still being recorded; no verdict yet" if running else
                   str(meta.get("error") or meta.get("status", ""))),
                  passed=None if running else verdict.get("pass") if verdict else False,
                  badge="RUNNING" if running else "",
                  provenance=_provenance(meta, folder))
    if run.samples.empty:
        return sec
    summary = analysis.summarize(run)
    sec.tables.append(("Measures", _table((label, with_unit(key, summary[key]))
                                          for key, label in RUN_MEASURES.items()
                                          if summary.get(key) is not None)))
    sec.figures.append(Figure("Dashboard: progress, convergence, copy and dirty rates, "
                              "image sizes (marks: kvmlab's steps and QEMU's events)",
                              _png(plots.dashboard(run))))
    if not run.trace.empty:
        periods = causes.classify(run)
        if len(periods):
            held = causes.time_per_cause(periods)
            sec.tables.append(("Why the job was held (from QEMU's trace events)",
                               _table((c, f"{t:.2f} s") for c, t in held.items() if t)))
    return sec


def notebook_section(folder: Path) -> Section:
    """A notebook run: its outputs without code (nbconvert), and the runs it recorded."""
    from nbconvert import HTMLExporter
    nb = sorted(folder.glob("*.ipynb"))[0]
    exporter = HTMLExporter(  # type: ignore[no-untyped-call]
        template_name="basic", exclude_input=True, exclude_input_prompt=True,
        exclude_output_prompt=True)
    body, _ = exporter.from_filename(str(nb))
    body = _nest_headings(body)
    runs = sorted(p.parent for p in folder.rglob("run.json"))
    metas = [json.loads((r / "run.json").read_text()) for r in runs]
    sec = Section("notebook", nb.stem.replace("_", " "), folder, body=body,
                  provenance={"notebook": str(nb), "runs": [str(r) for r in runs]})
    if metas:
        sec.setup = _setup(metas[0])
        verdicts = [m.get("verdict") or {} for m in metas]
        sec.passed = all(v.get("pass") for v in verdicts)
        sec.verdict = f"{sum(bool(v.get('pass')) for v in verdicts)} of {len(metas)} runs passed"
        sec.provenance.update(_provenance(metas[0], runs[0]))
    return sec


def _nest_headings(body: str, by: int = 2) -> str:
    """A notebook's headings one level under its section's (h1 -> h3 ...), without the
    pilcrow links nbconvert adds, so the document's outline stays the report's."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(body, "html.parser")
    for a in soup.select("a.anchor-link"):
        a.decompose()
    for h in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        h.name = f"h{min(6, int(h.name[1]) + by)}"
    return str(soup)


def sweep_section(folder: Path) -> Section:
    """A sweep: what varied, the results table (a row per run) and time to ready."""
    from kvmlab.batch.sweep import collect
    plan = json.loads((folder / "sweep.json").read_text()).get("plan") or {}
    frame = collect(folder, write=False)
    grid = plan.get("grid") or {}
    sec = Section("sweep", f"sweep of {Path(str(plan.get('notebook', folder))).stem}", folder,
                  question="What changes across: " + ", ".join(
                      f"{k} in {v}" for k, v in grid.items()) if grid else "",
                  provenance={"sweep": str(folder), "plan": plan})
    if frame.empty:
        sec.verdict = "no point has run"
        return sec
    ok = frame["pass"].fillna(False).astype(bool) if "pass" in frame else pd.Series([False])
    sec.passed = bool(ok.all())
    sec.verdict = f"{int(ok.sum())} of {len(frame)} runs passed"
    cols = [c for c in (*grid, "pass", "convergence", "time_to_ready_s", "bytes_copied",
                        "stall_time_s") if c in frame]
    shown = frame[cols].copy()
    if "bytes_copied" in shown:
        shown["bytes_copied"] = pd.to_numeric(shown["bytes_copied"], errors="coerce") / MIB
    shown = shown.rename(columns={"time_to_ready_s": "time to ready (s)",
                                  "bytes_copied": "copied (MiB)",
                                  "stall_time_s": "stalled (s)"})
    sec.tables.append(("A row per run", str(shown.to_html(index=False, border=0,
                                                          float_format="{:.3g}".format,
                                                          classes="measures"))))
    if "time_to_ready_s" in frame:
        sec.figures.append(_sweep_figure(frame, [k for k in grid if k in frame]))
    return sec


def _sweep_figure(frame: pd.DataFrame, varied: list[str]) -> Figure:
    """Time to ready against the first numeric parameter swept (the others as colours),
    or a bar per run when every swept parameter is a word."""
    ttr = pd.to_numeric(frame["time_to_ready_s"], errors="coerce")
    never = f" ({int(ttr.isna().sum())} runs never READY: not drawn)" if ttr.isna().any() else ""
    numeric = [k for k in varied
               if pd.to_numeric(frame[k], errors="coerce").notna().all() and k != "qemu"]
    if numeric:
        x = numeric[0]
        hue = next((k for k in varied if k != x), None)
        return Figure(f"Time to ready against {x}" + (f", by {hue}" if hue else "") + never,
                      _png(plots.metric_vs_param(frame, x, "time_to_ready_s", hue=hue)))
    fig, ax = matplotlib.pyplot.subplots(figsize=(8, 0.5 + 0.4 * len(frame)))
    labels = [", ".join(f"{k}={r[k]}" for k in varied) for _, r in frame.iterrows()]
    ax.barh(labels, ttr.fillna(0))
    for y, t in enumerate(ttr):
        if pd.isna(t):
            ax.text(0, y, " never READY", va="center", color="tab:red")
    ax.set_xlabel("time to ready (s)")
    fig.tight_layout()
    return Figure("Time to ready per run" + never, _png(fig))


def _provenance(meta: dict[str, Any], folder: Path) -> dict[str, Any]:
    prov = meta.get("provenance") or {}
    return {"run id": meta.get("run_id", folder.name), "raw data": str(folder),
            "git revision": prov.get("git_revision"), "host": prov.get("host"),
            "kvmlab": prov.get("kvmlab_version"), "QEMU": prov.get("qemu_version"),
            "Python": prov.get("python"), "guest kernel": meta.get("guest_kernel"),
            "parameters": meta.get("params") or {}}


BUILDERS = {"run": run_section, "notebook": notebook_section, "sweep": sweep_section}


def read_input(folder: str | Path, kind: str | None = None) -> Section:
    """The section for one input folder (its *kind* found by :func:`kind_of` if not given)."""
    path = Path(folder).expanduser().resolve()
    return BUILDERS[kind or kind_of(path)](path)


# -- rendering -------------------------------------------------------------------------------
def render(sections: Sequence[Section], title: str, template: Path | None = None,
           intro: str = "") -> str:
    """The HTML document: *template* (a file) or the packaged one; *intro* replaces the
    line saying how many folders it was made from."""
    folder, name = (template.parent, template.name) if template else (TEMPLATES, TEMPLATE)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(folder), str(TEMPLATES)]),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    try:
        return env.get_template(name).render(title=title, sections=sections, intro=intro,
                                             generated=pd.Timestamp.now(tz="UTC")
                                             .strftime("%Y-%m-%d %H:%M UTC"))
    except jinja2.TemplateError as err:
        raise ReportError(f"template {folder / name}: {err}") from err


def chromium() -> str:
    """Debian's Chromium (the browser the UI tests drive)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise ReportError("--pdf needs chromium (apt install chromium; make setup has it)")
    return exe


def print_pdf(html_file: Path, pdf: Path, timeout: float = 120) -> None:
    """Print *html_file* to *pdf* with headless Chromium (its own profile, removed)."""
    with tempfile.TemporaryDirectory(prefix="kvmlab-chromium-") as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--no-pdf-header-footer", f"--user-data-dir={profile}",
               f"--print-to-pdf={pdf}", html_file.as_uri()]
        try:
            res = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise ReportError(f"chromium did not print {html_file} within {timeout:.0f} s"
                              ) from err
    if res.returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
        tail = res.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ReportError(f"chromium could not print the PDF: {tail[0]}")


def make_report(inputs: Iterable[str | Path], out: str | Path, *, pdf: str | Path | None = None,
                title: str | None = None, template: str | Path | None = None,
                progress: Any = None) -> list[Path]:
    """Read every input, then write the HTML (and the PDF): returns the files written.

    *progress* (a callable taking one line) is told each step.  Bad input (an unknown
    folder, an output that cannot be written, a missing template) fails before anything
    is written; a PDF that fails leaves the HTML and no PDF.
    """
    say = progress or (lambda _line: None)
    folders = [Path(f) for f in inputs]
    if not folders:
        raise BadInput("give at least one run, notebook run or sweep folder")
    html_out, pdf_out, tpl = _outputs(out, pdf, template)
    kinds = [kind_of(f.expanduser().resolve()) for f in folders]   # all, before any work
    sections = []
    for i, (f, kind) in enumerate(zip(folders, kinds, strict=True), 1):
        say(f"[{i}/{len(folders)}] reading {f} ({kind})")
        if kind == "seed":         # the lab note: a summary and a section per claim
            path = f.expanduser().resolve()
            sections += labnote_sections(path, _seed_builds(path), say)[0]
        else:
            sections.append(read_input(f, kind))
    if not title and set(kinds) == {"seed"}:
        title = LABNOTE_TITLE
    doc = render(sections, title or _default_title(sections), tpl)
    return _write(doc, html_out, pdf_out, sum(len(s.figures) for s in sections), say)


def _outputs(out: str | Path, pdf: str | Path | None, template: str | Path | None
             ) -> tuple[Path, Path | None, Path | None]:
    """The HTML and PDF to write and the template, each checked before any work."""
    html_out = check_output(Path(out), ".html")
    pdf_out = check_output(Path(pdf), ".pdf") if pdf is not None else None
    tpl = Path(template).expanduser().resolve() if template is not None else None
    if tpl is not None and not tpl.is_file():
        raise BadInput(f"template {tpl} does not exist")
    return html_out, pdf_out, tpl


def _write(doc: str, html_out: Path, pdf_out: Path | None, figures: int,
           say: Any) -> list[Path]:
    """Write the HTML atomically, then print the PDF (none left if printing fails)."""
    try:
        trust.write_atomic(html_out, doc)
    except OSError as err:
        raise ReportError(f"cannot write {html_out}: {err.strerror}") from err
    written = [html_out]
    say(f"wrote {html_out} ({len(doc) / MIB:.1f} MiB, {figures} figures)")
    if pdf_out is not None:
        say("printing the PDF with headless Chromium")
        part = pdf_out.with_name(f".{pdf_out.name}.part")
        try:
            print_pdf(html_out, part)
            os.replace(part, pdf_out)
        finally:
            part.unlink(missing_ok=True)
        written.append(pdf_out)
        say(f"wrote {pdf_out}")
    return written


def _default_title(sections: Sequence[Section]) -> str:
    names = sorted({s.title for s in sections})
    return "kvmlab: " + (", ".join(names) if len(names) <= 3 else f"{len(sections)} studies")


# -- the seed's lab note, reproduced ---------------------------------------------------------
#: the lab note's title: the study it reports
LABNOTE_TITLE = "Is a mirror a good snapshot of a running VM? The seed's lab note, reproduced"
BADGES = {"agrees": "AGREES", "disagrees": "DISAGREES", "not shown": "NOT SHOWN",
          "differs between builds": "DIFFERS BETWEEN BUILDS",
          "agrees where shown": "AGREES WHERE SHOWN",
          "disagrees where shown": "DISAGREES WHERE SHOWN",
          "not reproduced": "NOT REPRODUCED"}
#: kvmlab's own questions are statements that hold or not, not agreements with the seed
OWN_BADGES = {"agrees": "HOLDS", "disagrees": "DOES NOT HOLD",
              "agrees where shown": "HOLDS WHERE SHOWN",
              "disagrees where shown": "DOES NOT HOLD WHERE SHOWN"}


def _build_label(build: str, runs: dict[str, labnote.CaseRun]) -> str:
    meta = next(iter(runs.values())).meta if runs else {}
    version = (meta.get("qemu") or {}).get("version") or \
        (meta.get("provenance") or {}).get("qemu_version")
    return f"{build} (QEMU {version})" if version else build


def _seed_builds(folder: Path) -> list[str]:
    """The builds of a ``kvmlab seed`` folder (a sweep of the seed notebook), in the order
    they were asked for; empty for any other sweep."""
    try:
        plan = json.loads((folder / "sweep.json").read_text()).get("plan") or {}
    except (OSError, ValueError):
        return []
    if Path(str(plan.get("notebook", ""))).name != "08_seed_summary.ipynb":
        return []
    names = [p.params.get("qemu", "system")        # the plan's order: as asked
             for p in read_points(folder, [str(n) for n in plan.get("points") or []])]
    return list(dict.fromkeys(str(n) for n in names))


def labnote_sections(folder: Path, qemu: Sequence[str], say: Any = None
                     ) -> tuple[list[Section], list[labnote.Judgement]]:
    """The lab note: a summary, then a section per claim (the seed's words, what kvmlab
    measured on each build, agree or not, the runs' figures); *say* is told each claim."""
    say = say or (lambda _line: None)
    runs = labnote.read_runs(folder)
    judged = labnote.judge_all(runs, qemu, labnote.claims_for(labnote.asked_cases(folder)))
    label = {b: _build_label(b, runs.get(b, {})) for b in qemu}
    sections = [_summary_section(folder, qemu, label, runs, judged)]
    drawn: set[Path] = set()            # each run drawn once
    for j in sorted(judged, key=lambda j: j.claim.own):   # the seed's claims first
        c = j.claim
        say(f"  {c.key}: {j.outcome}")
        kind, question, badge = (("question", f"kvmlab's own question, not the seed's words: {c.seed}",
                                  OWN_BADGES.get(j.outcome, BADGES[j.outcome])) if c.own else
                                 ("claim", f"The seed: {c.seed}", BADGES[j.outcome]))
        sec = Section(kind, f"{c.key}: {c.claim}", folder, question=question,
                      badge=badge, passed={"agrees": True, "disagrees": False,
                                           "differs between builds": False,
                                           "disagrees where shown": False,
                                           }.get(j.outcome),
                      verdict=" ".join(f"On {label[b]}: {f.text}." for b, f in j.findings.items()))
        case_runs = [runs[b][case] for b in qemu for case in c.cases if case in runs.get(b, {})]
        fresh = [r for r in case_runs if r.path not in drawn]   # E4b shows E4's runs
        drawn.update(r.path for r in fresh)
        methods = [r for r in fresh if r.case in labnote.METHOD_CASES]
        for b in dict.fromkeys(r.build for r in methods):   # a table and chart per build
            copies = labnote.method_copies(runs[b])
            if not copies.empty:
                table = method_summary(copies)
                sec.tables.append((f"{label[b]}: snapshot methods", str(table.to_html(
                    index=False, border=0, classes="measures"))))
                sec.figures.append(Figure(
                    f"{label[b]}: what each method and quiesce cost the guest and the host",
                    _png(plots.snapshot_methods(table, title=f"Snapshot methods, {label[b]}"))))
        studies = [r for r in fresh if r.case in labnote.CONSISTENCY]
        for b in dict.fromkeys(r.build for r in studies):   # one chart per build
            trials = labnote.consistency_trials(runs[b])
            if not trials.empty:
                sec.figures.append(Figure(
                    f"{label[b]}: what copies cut from the live VM held, by cut and cache mode",
                    _png(plots.consistency(trials, title=f"Copy consistency, {label[b]}"))))
        for r in fresh:
            if r in studies or r in methods:
                continue
            data = load_run(r.path)
            if data.samples.empty:      # a job quicker than one sample: a line, no axes
                sec.setup.append(f"{r.case} on {label[r.build]}: its jobs ended before the "
                                 "first sample, so there is no dashboard")
            else:
                sec.figures.append(Figure(f"{r.case} on {label[r.build]}: dashboard",
                                          _png(plots.dashboard(data))))
        sec.provenance = {"runs": [str(r.path) for r in case_runs]}
        sections.append(sec)
    return sections, judged


def _summary_section(folder: Path, qemu: Sequence[str], label: dict[str, str],
                     runs: dict[str, dict[str, labnote.CaseRun]],
                     judged: list[labnote.Judgement]) -> Section:
    sweep = json.loads((folder / "sweep.json").read_text())
    params = (sweep.get("plan") or {}).get("params") or {}
    sessions = sweep.get("sessions") or []
    seed_claims = [j for j in judged if not j.claim.own]
    own = [j for j in judged if j.claim.own]
    tallies = {b: labnote.tally(seed_claims, b) for b in qemu}
    own_tallies = {b: labnote.tally(own, b) for b in qemu}
    some = next((r for b in qemu for r in runs.get(b, {}).values()), None)
    verdict = "; ".join(
        f"{label[b]}: of the seed's {len(seed_claims)} claims {t['agree']} agree, "
        f"{t['disagree']} disagree, {t['not shown']} not shown, {t['not reproduced']} not "
        "reproduced (a display of the seed's own build)" for b, t in tallies.items())
    if own:
        verdict += ". kvmlab's own questions: " + "; ".join(
            f"{label[b]}: {len(own)} asked, {t['agree']} hold, {t['disagree']} do not hold, "
            f"{t['not shown']} not shown" for b, t in own_tallies.items())
    sec = Section("summary", "Summary: the seed's claims against what kvmlab measured", folder,
                  question="The seed is an engineer's notes on QEMU's drive_mirror, driven by "
                           "hand with virsh and HMP (E1-E7, three conclusions). kvmlab ran each "
                           "experiment on each QEMU build; below, each claim stands beside what "
                           "was measured, then kvmlab's own questions, which are not the seed's.",
                  badge="IN SHORT", passed=None, verdict=verdict,
                  provenance={"seed folder": str(folder), "plan": sweep.get("plan")})
    sec.setup = [", ".join(label[b] for b in qemu) + (
        f"; {some.meta.get('accel')} accelerator" if some else ""),
        f"guest disks of {params.get('image_mib', '?')} MiB with "
        f"{params.get('fill_mib', '?')} MiB of data"]
    if sessions:            # a resumed suite ran in several sessions
        ran = sum(int(x.get("points_run") or 0) for x in sessions)
        wall = sum(float(x.get("wall_s") or 0) for x in sessions)
        workers = sorted({x.get("workers") for x in sessions})
        sec.setup.append(f"{ran} runs in {wall:.0f} s on {'/'.join(map(str, workers))} workers"
                         + (f", in {len(sessions)} sessions (resumed)" if len(sessions) > 1
                            else ""))
    from kvmlab.batch.sweep import outcome
    failed = outcome(folder)[1]
    if failed:
        sec.setup.append(f"{len(failed)} runs failed: their claims are 'not shown'")
    sec.tables.append(("Claim by claim", str(pd.DataFrame(
        [{"claim": f"{j.claim.key}: {j.claim.claim}" + (" (kvmlab's question)" if j.claim.own
                                                        else ""),
          **{label[b]: f.word for b, f in j.findings.items()}}
         for j in sorted(judged, key=lambda j: j.claim.own)]
    ).to_html(index=False, border=0, classes="measures"))))
    return sec


def make_labnote(folder: str | Path, out: str | Path, qemu: Sequence[str], *,
                 pdf: str | Path | None = None, title: str = "",
                 template: str | Path | None = None,
                 say: Any = None) -> list[labnote.Judgement]:
    """Write the lab note of the ``kvmlab seed`` run in *folder* (HTML, and PDF if asked)."""
    say = say or (lambda _line: None)
    html_out, pdf_out, tpl = _outputs(out, pdf, template)
    sections, judged = labnote_sections(Path(folder), qemu, say)
    doc = render(sections, title or LABNOTE_TITLE, tpl,
                 intro=f"Generated {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M UTC} "
                       f"by kvmlab seed from the runs in {folder}.")
    _write(doc, html_out, pdf_out, sum(len(s.figures) for s in sections), say)
    return judged
