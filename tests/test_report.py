"""``kvmlab report``: runs, a notebook run and a sweep, recorded from real QEMU, into one
document; the PDF printed by the real headless Chromium and read back with poppler."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from bs4 import BeautifulSoup

from kvmlab.errors import BadInput
from kvmlab.report import document as report

DATA = Path(__file__).parent / "data"
RUNS = [DATA / "runs" / "trace-nbd-suspend", DATA / "runs" / "converge-background"]
SWEEP = DATA / "sweeps" / "convergence-2"
NOTEBOOK = sorted((SWEEP / "points").iterdir())[0]      # a point is a notebook run folder


def _pngs_in(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum("image/png" in o.get("data", {}) for c in nb["cells"]
               for o in c.get("outputs", []))


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_report_of_runs_a_notebook_and_a_sweep_has_no_code_and_every_figure(
        tmp_path: Path) -> None:
    before = _snapshot(DATA)
    said: list[str] = []
    out = tmp_path / "report.html"
    written = report.make_report([*RUNS, NOTEBOOK, SWEEP], out, title="Mirror study",
                                 progress=said.append)
    assert written == [out.resolve()]
    assert _snapshot(DATA) == before                    # the inputs are only read
    assert said[0].startswith("[1/4] reading") and said[-1].startswith(f"wrote {out.resolve()}")
    soup = BeautifulSoup(out.read_text(), "html.parser")
    assert soup.title is not None and soup.title.text == "Mirror study"
    # no code: no input area, none of the notebook's source lines
    assert not soup.select(".jp-InputArea, .input_area, .jp-CodeCell .jp-Editor")
    text = soup.get_text()
    assert "run_experiment(" not in text and "import matplotlib" not in text
    # every figure, embedded: a dashboard per run, the sweep's, the notebook's outputs
    imgs = [i["src"] for i in soup.find_all("img")]
    assert len(imgs) == len(RUNS) + 1 + _pngs_in(next(NOTEBOOK.glob("*.ipynb")))
    assert all(str(src).startswith("data:image/png;base64,") and len(str(src)) > 5000
               for src in imgs)
    # each section: its heading, setup, verdict; the runs' measures carry units
    heads = [h.text for h in soup.find_all("h2")]
    assert heads == ["1. target fault", "2. convergence pressure", "3. 11 active mirror",
                     "4. sweep of 11_active_mirror", "Provenance"]
    runs = soup.select("section.run")
    assert "Target faults during a mirror" in runs[0].select_one(".question").text
    assert "7.2" in runs[0].find("ul").text and "tcg accelerator" in runs[0].find("ul").text
    measures = {tr.find_all("td")[0].text: tr.find_all("td")[1].text
                for tr in runs[0].select("table.measures tr") if tr.find_all("td")}
    assert measures["time to ready"].endswith(" s") and measures["copied"].endswith(" MiB")
    assert "will not converge" in runs[1].select_one(".verdict").text
    assert "Why the job was held" in runs[0].text          # traced: causes of the stall
    assert "mirror speed limit: 8.00 MiB/s" in runs[0].find("ul").text
    sweep = soup.select_one("section.sweep")
    assert "2 of 2 runs passed" in sweep.text and "modes in" in sweep.text
    # provenance: git revision, QEMU, run ids and where the raw data is
    prov = soup.select_one("#provenance").text
    for run in RUNS:
        meta = json.loads((run / "run.json").read_text())
        assert meta["run_id"] in prov and str(run.resolve()) in prov
        assert meta["provenance"]["git_revision"] in prov
    assert "QEMU emulator version 7.2" in prov


def test_a_version_comparison_becomes_its_findings_without_code(tmp_path: Path) -> None:
    """A 30_qemu_versions run (the seed suite, faults and a throttled mirror on 7.2 and
    10.0, recorded: its executed notebook and its runs' run.json files)."""
    folder = DATA / "notebooks" / "qemu-versions"
    nb = folder / "30_qemu_versions.ipynb"
    out = tmp_path / "versions.html"
    report.make_report([folder], out)
    soup = BeautifulSoup(out.read_text(), "html.parser")
    (sec,) = soup.select("section.notebook")
    assert not sec.select(".jp-InputArea, .input_area")
    sources = [c["source"] for c in json.loads(nb.read_text())["cells"]
               if c["cell_type"] == "code"]
    assert not any(line.strip() in sec.text for src in sources
                   for line in "".join(src).splitlines() if len(line.strip()) > 25)
    imgs = sec.select("div.notebook img")
    assert len(imgs) == _pngs_in(nb) == 2
    # the notebook's headings sit under the section's
    assert [h.name for h in sec.select("div.notebook h3, div.notebook h4")] == ["h3", "h4", "h4"]
    assert "Side by side (differences highlighted)" in sec.text
    assert "36 runs passed" in sec.select_one(".verdict").text


def test_the_pdf_is_printed_by_chromium_and_has_the_headings(tmp_path: Path) -> None:
    out, pdf = tmp_path / "r.html", tmp_path / "r.pdf"
    written = report.make_report([RUNS[0], SWEEP], out, pdf=pdf, title="Outage study")
    assert written == [out.resolve(), pdf.resolve()]
    assert not list(tmp_path.glob(".*"))                 # no temp or partial file left
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          check=True, text=True).stdout
    for heading in ("Outage study", "1. target fault", "2. sweep of 11_active_mirror",
                    "Provenance", "Verdict", "Setup"):
        assert heading in text, heading
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")],
                   check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 2
    first = matplotlib.image.imread(pages[0])
    assert first.std() > 0.05                            # ink on the page, not blank


def test_an_edited_template_is_used(tmp_path: Path) -> None:
    tpl = tmp_path / "mine.html.j2"
    tpl.write_text((report.TEMPLATES / report.TEMPLATE).read_text()
                   .replace("<h1>{{ title }}</h1>", "<h1 class='ours'>Lab {{ title }}</h1>"))
    out = tmp_path / "r.html"
    report.make_report([RUNS[0]], out, template=tpl, title="T")
    assert "<h1 class='ours'>Lab T</h1>" in out.read_text()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    not_a_run = tmp_path / "photos"
    not_a_run.mkdir()
    cases = [
        (([RUNS[0], not_a_run], out, {}), "is not a run, notebook run or sweep folder"),
        (([tmp_path / "nowhere"], out, {}), "is not a folder"),
        (([RUNS[0]], tmp_path / "no" / "r.html", {}), "folder .* does not exist"),
        (([RUNS[0]], tmp_path / "r.txt", {}), "must end in .html"),
        (([RUNS[0]], out, {"pdf": tmp_path / "r.html"}), "must end in .pdf"),
        (([RUNS[0]], out, {"template": tmp_path / "none.j2"}), "template .* does not exist"),
        (([], out, {}), "give at least one"),
    ]
    for (inputs, dest, kw), message in cases:
        with pytest.raises(BadInput, match=message) as err:
            report.make_report(inputs, dest, **kw)
        assert "\n" not in str(err.value)
    # a folder nobody can write in, even root (os.access would say yes to root)
    with pytest.raises(BadInput, match=r"cannot write /proc/r\.html: ") as err:
        report.make_report([RUNS[0]], Path("/proc/r.html"))
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_the_command_says_what_it_does_and_fails_in_one_line(tmp_path: Path) -> None:
    kvmlab = [sys.executable, "-m", "kvmlab"]
    ok = subprocess.run([*kvmlab, "report", str(RUNS[1]), "--out", str(tmp_path / "r.html")],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "[1/1] reading" in ok.stderr and ok.stdout.startswith("report: ")
    bad = subprocess.run([*kvmlab, "report", str(tmp_path), "--out", str(tmp_path / "x.html")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "is not a run, notebook run or sweep" in bad.stderr
    assert not (tmp_path / "x.html").exists()
    assert shutil.which("chromium"), "chromium missing: run 'make setup'"


def test_a_run_still_being_written_is_running_not_fail(tmp_path: Path) -> None:
    """A run whose owner still records it is shown as RUNNING with no verdict; once its
    owner is gone it is judged (killed runs fail)."""
    from kvmlab._proc import owner_token
    run = tmp_path / "r"
    shutil.copytree(RUNS[0], run)
    meta = json.loads((run / "run.json").read_text())
    meta.update(status="running", owner=owner_token(), verdict=None)
    (run / "run.json").write_text(json.dumps(meta))
    sec = report.run_section(run)
    assert sec.badge == "RUNNING" and sec.passed is None
    assert "still being recorded" in sec.verdict
    html = report.make_report([run], tmp_path / "report.html")[0].read_text()
    assert "RUNNING" in html and "FAIL" not in html
    meta["owner"] = {**owner_token(), "pid": 2**22 + 1}             # no such process
    (run / "run.json").write_text(json.dumps(meta))
    assert report.run_section(run).passed is False


def test_an_output_inside_the_folder_the_command_makes_is_accepted(tmp_path: Path) -> None:
    """kvmlab seed --out DIR --pdf DIR/labnote.pdf: DIR does not exist yet (seed makes it).
    Checking the PDF's path creates nothing; without the folder to be made it is refused."""
    from kvmlab.report.document import check_output
    folder = tmp_path / "seed-out"
    pdf = folder / "labnote.pdf"
    assert check_output(pdf, ".pdf", creates=folder) == pdf
    assert not folder.exists()
    with pytest.raises(BadInput, match="does not exist"):
        check_output(pdf, ".pdf")
    with pytest.raises(BadInput, match="does not exist"):     # not inside what is made
        check_output(tmp_path / "elsewhere" / "x.pdf", ".pdf", creates=folder)
