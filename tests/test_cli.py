"""The kvmlab command, through click's CliRunner."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import qemu_pids

from kvmlab import paths
from kvmlab._proc import owner_token
from kvmlab.cli import main
from kvmlab.errors import BadInput
from kvmlab.guest.build import Guest
from kvmlab.store.runs import load_run
from kvmlab.store.tmpdirs import reap_stale_tmpdirs

NB = Path(__file__).resolve().parent.parent / "notebooks" / "01_mirror_basic.ipynb"


@pytest.mark.qemu
def test_guest_build_reports_existing_guest(guest: Guest) -> None:
    res = CliRunner().invoke(main, ["guest", "build"])
    assert res.exit_code == 0, res.output
    assert str(guest.kernel.parent) in res.output and guest.kernel_version in res.output


def test_guest_build_bad_kernel(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["guest", "build", "--out", str(tmp_path / "g"),
                                    "--kernel", str(tmp_path / "missing"), "--force"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("kvmlab: error:") and "does not exist" in res.output
    assert not (tmp_path / "g").exists()


def test_run_rejects_unknown_parameter(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["run", str(NB), "-p", "no_such_param", "1", "--out", str(out)])
    assert res.exit_code == 2
    assert "unknown parameter(s) no_such_param" in res.output
    assert not out.exists()


#: a small, quick E1
SMALL_E1 = ["-p", "image_mib", "48", "-p", "fill_mib", "8", "-p", "accel", "tcg",
            "-p", "after_ready_s", "1"]


def kvmlab_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmlab", "run", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.qemu
def test_run_executes_notebook_into_one_folder_talking(tmp_path: Path) -> None:
    """What 'make demo' does: papermill run, HTML export, the run's data, one folder; while
    it runs a live line (cell, job state, offset/len, rate) and the job's events, then
    PASS with the verdict and the folder."""
    out = tmp_path / "r"
    res = kvmlab_run(str(NB), *SMALL_E1, "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    names = {p.name for p in out.iterdir()}
    assert {"01_mirror_basic.ipynb", "01_mirror_basic.html", "run.json", "samples.parquet",
            "events.parquet", "sizes.parquet", "guest_ops.parquet", "progress.png",
            "dashboard.png"} <= names
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "done" and meta["verdict"]["pass"] is True
    assert meta["params"]["image_mib"] == 48
    assert "VERDICT: PASS" in (out / "01_mirror_basic.html").read_text()

    live = re.compile(r"^cell \d+/7 \| drive0 mirror (running|ready) \| [\d.]+/[\d.]+ MiB "
                      r"\(\d+%\) \| [\d.]+ MiB/s")
    assert any(live.match(ln) for ln in res.stderr.splitlines()), res.stderr
    for step in ("job start  drive0", "READY  drive0", "cancel  drive0", "completed  drive0"):
        assert step in res.stderr, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"run folder: {out}"
    assert lines[1].startswith("PASS mirror_basic (r): job_end=BLOCK_JOB_COMPLETED")
    assert lines[-1] == f"PASS: {out}"


@pytest.mark.qemu
def test_run_fail_verdict_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = kvmlab_run(str(NB), *SMALL_E1, "-p", "speed", "65536", "-p", "ready_timeout", "2",
                     "--out", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL mirror_basic (r): not ready within 2 s" in res.stdout
    assert res.stdout.splitlines()[-1] == f"FAIL: {out}"
    assert "Traceback" not in res.stdout + res.stderr


def _wait_for(pred: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _job_started(out: Path) -> bool:
    ev = out / "events.jsonl"
    return ev.exists() and '"mirror_start"' in ev.read_text()


@pytest.mark.qemu
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_run_stopped_by_signal_cleans_up(sig: int, tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM mid-mirror: the cell is interrupted, the experiment stops QEMU and
    removes its scratch images, run.json says interrupted, exit 130 with one line."""
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "kvmlab", "run", str(NB), *SMALL_E1,
                             "-p", "speed", "1048576", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _job_started(out), 120, "the mirror to start")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert stderr.splitlines()[-1].startswith("kvmlab: interrupted"), stderr
    assert "Traceback" not in stdout + stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted", meta
    assert not (paths.scratch_dir() / meta["run_id"]).exists()


@pytest.mark.qemu
def test_killed_run_is_marked_killed_and_reaped(tmp_path: Path) -> None:
    """kill -9 of kvmlab run: its kernel and QEMU follow it; the next launch marks the run
    killed and removes its scratch images; load_run says killed too."""
    import tempfile
    out = tmp_path / "r"
    before = set(Path(tempfile.gettempdir()).iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "kvmlab", "run", str(NB), *SMALL_E1,
                             "-p", "speed", "1048576", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _job_started(out), 120, "the mirror to start")
    finally:
        proc.kill()
        proc.wait()
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "running"
    kernel = meta["owner"]["pid"]
    _wait_for(lambda: not Path(f"/proc/{kernel}").exists(), 30, "the kernel to follow us")
    _wait_for(lambda: not qemu_pids(), 30, "its QEMU to die")
    assert (paths.scratch_dir() / meta["run_id"]).exists()
    left = set(Path(tempfile.gettempdir()).iterdir()) - before
    assert left and all(p.name.startswith("kvmlab-") for p in left), left  # no stray tmp*.json
    assert any((p / "kernel.json").exists() for p in left)   # the kernel's connection file
    reap_stale_tmpdirs()                               # what the next launch does first
    assert not any(p.exists() for p in left)
    assert not (paths.scratch_dir() / meta["run_id"]).exists()
    assert json.loads((out / "run.json").read_text())["status"] == "killed"
    assert load_run(out).meta["status"] == "killed"
    assert not list(out.glob(".*-reserve"))            # the killed run's room is given back
    # QEMU's trace file is the trace's journal: read from it, on the run's time base
    data = load_run(out)
    tr = data.trace
    assert (tr["event"] == "mirror_one_iteration").any()
    assert tr["t"].min() >= 0 and tr["t"].max() <= data.events["t"].max() + 5


def test_load_run_marks_a_run_of_a_dead_process_killed(tmp_path: Path) -> None:
    import shutil
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "stall-set-speed", run)
    meta = json.loads((run / "run.json").read_text())
    meta.update(status="running", owner={"host": os.uname().nodename, "pid": 2 ** 22 + 7,
                                         "start": 1})
    (run / "run.json").write_text(json.dumps(meta))
    assert load_run(run).meta["status"] == "killed"
    meta.update(status="running", owner=owner_token())        # alive: left alone
    (run / "run.json").write_text(json.dumps(meta))
    assert load_run(run).meta["status"] == "running"


def test_run_of_a_failing_notebook_is_one_fail_line(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell that raises: FAIL with the error and the default run folder, exit 1, no
    traceback (there was an AssertionError when --out was not given)."""
    import nbformat
    nb = tmp_path / "boom.ipynb"
    cells = [nbformat.v4.new_code_cell("x: int = 1", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), nb)
    env = dict(os.environ, KVMLAB_RUNS=str(tmp_path / "runs"))
    res = subprocess.run([sys.executable, "-m", "kvmlab", "run", str(nb)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL notebook: boom.ipynb failed in cell 2: RuntimeError: boom" in res.stdout
    (folder,) = (tmp_path / "runs").iterdir()
    assert res.stdout.splitlines()[-1] == f"FAIL: {folder}"
    assert "Traceback" not in res.stdout + res.stderr


def test_analyze_a_saved_run(tmp_path: Path) -> None:
    import shutil
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "stall-set-speed", run)
    res = CliRunner().invoke(main, ["analyze", str(run), "--stall-min", "1"])
    assert res.exit_code == 0, res.output
    assert "convergence" in res.output and "converged" in res.output
    assert any(line.split()[:2] == ["stall_count", "1"] for line in res.output.splitlines())
    assert (run / "dashboard.png").exists()


def test_analyze_not_a_run(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["analyze", str(tmp_path)])
    assert res.exit_code == 2 and "not a kvmlab run folder" in res.output


def _one_line_error(res: object, *needles: str) -> None:
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kvmlab: error:"), out
    assert "Traceback" not in out
    for n in needles:
        assert n in out, out


def test_run_input_errors_are_one_line_and_create_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r"
    text = tmp_path / "notes.ipynb"
    text.write_text("not a notebook\n")
    _one_line_error(CliRunner().invoke(main, ["run", str(text), "--out", str(out)]),
                    "is not a Jupyter notebook")
    _one_line_error(CliRunner().invoke(main, ["run", str(NB), "-f", str(tmp_path / "nope.yaml"),
                                              "--out", str(out)]),
                    "cannot read parameters file")
    _one_line_error(CliRunner().invoke(main, ["run", str(NB), "-p", "speed", "[1",
                                              "--out", str(out)]),
                    "-p speed '[1': not a valid YAML value")
    bad = tmp_path / "bad.yaml"
    bad.write_text("speed: [1\n")
    _one_line_error(CliRunner().invoke(main, ["run", str(NB), "-f", str(bad), "--out", str(out)]),
                    "is not valid YAML")
    assert not out.exists()


def test_analyze_damaged_runs_are_one_line(tmp_path: Path) -> None:
    import shutil
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "stall-set-speed", run)
    pq = run / "samples.parquet"
    pq.write_bytes(pq.read_bytes()[: pq.stat().st_size // 2])      # truncated
    _one_line_error(CliRunner().invoke(main, ["analyze", str(run)]), "samples.parquet is damaged")
    shutil.rmtree(run)
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "stall-set-speed", run)
    (run / "run.json").write_text('{"run_id": ')
    _one_line_error(CliRunner().invoke(main, ["analyze", str(run)]), "run.json is damaged")


def test_analyze_a_notebook_folder_of_several_runs_with_units(tmp_path: Path) -> None:
    """What `kvmlab run notebooks/04_pivot.ipynb` leaves: runs in sub-folders."""
    import shutil
    for name in ("stall-set-speed", "shallow-then-full"):
        shutil.copytree(Path(__file__).parent / "data" / "runs" / name, tmp_path / "nb" / name)
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "nb")])
    assert res.exit_code == 0, res.output
    assert res.output.count("\n== ") + res.output.startswith("== ") == 2
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln and not ln.startswith("==")}
    assert lines["bytes_copied"].endswith(" MiB") and lines["mean_copy_rate"].endswith(" MiB/s")
    assert lines["time_to_ready_s"].endswith(" s")
    assert "param_stall_speed      1 B/s" in res.output            # not "0.00 MiB/s"
    assert "param_speed            4.00 MiB/s" in res.output
    assert "param_buf_size         256 KiB" in res.output

    for name in ("stall-set-speed", "shallow-then-full"):
        assert f"dashboard: {tmp_path / 'nb' / name / 'dashboard.png'}" in res.output
        assert (tmp_path / "nb" / name / "dashboard.png").stat().st_size > 10_000


def test_run_kernel_talks_over_unix_sockets_not_tcp(tmp_path: Path) -> None:
    """No 'Kernel is running over TCP without encryption' on every run: the kernel's
    sockets are unix sockets in a private dir that is removed afterwards."""
    import subprocess
    import sys
    import tempfile
    tiny = Path(__file__).parent / "notebooks" / "tiny.ipynb"
    before = {p for p in Path(tempfile.gettempdir()).glob("kvmlab-kernel-*")}
    res = subprocess.run([sys.executable, "-m", "kvmlab", "run", str(tiny), "-p", "x", "41",
                          "--out", str(tmp_path / "r")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "without encryption" not in res.stdout + res.stderr
    assert "hello 42" in (tmp_path / "r" / "tiny.ipynb").read_text()
    # it records no experiment run: it ran, and no verdict is claimed
    assert res.stdout.splitlines()[-1] == f"RAN: {tmp_path / 'r'}"
    assert "PASS" not in res.stdout
    assert {p for p in Path(tempfile.gettempdir()).glob("kvmlab-kernel-*")} == before


import pytest  # noqa: E402


@pytest.mark.parametrize("name,value,msg", [
    ("speed", "-5", "speed=-5"), ("sync", "bogus", "sync='bogus'"),
    ("granularity", "3000", "granularity=3000 must be a power of two"),
    ("backend", "nosuch", "backend='nosuch' is not one of"),
    ("image_mib", "0", "image_mib=0 must be an integer of at least 16"),
    ("fill_mib", "60", "fill_mib=60 must be at most 3/4 of image_mib=64"),
    ("sample_interval", "0", "sample_interval=0 must be"),
    # limits from the machine and from QEMU, checked before a folder or a VM exists
    ("image_mib", "100000000", "image_mib=100000000 is more than the"),
    ("speed", "1180591620717411303424", "above QEMU's largest integer"),
    ("sample_interval", "1.0e-9", "sample_interval=1e-09 must be a number of seconds from"),
    ("target_format", "junk", "target_format='junk' is not one of qcow2, raw"),
    ("disk_format", "vmdkx", "disk_format='vmdkx' is not one of"),
    ("after_ready_s", "-5.0", "after_ready_s=-5.0 must be a number of seconds"),
    ("ready_timeout", "0", "ready_timeout=0 must be a number of seconds above 0"),
    ("run_path", "../../elsewhere", "leaves the runs folder")])
def test_run_checks_values_before_anything_starts(name: str, value: str, msg: str,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "r"
    _one_line_error(CliRunner().invoke(main, ["run", str(NB), "-p", name, value,
                                              "--out", str(out)]), msg)
    assert not out.exists()


def test_units_of_summary_values() -> None:
    from kvmlab.cli import with_unit
    assert with_unit("param_speed", 0) == "unlimited"
    assert with_unit("mean_copy_rate", 3 * 2**20) == "3.00 MiB/s"
    assert with_unit("mean_dirty_rate", -0.0) == "0 B/s"
    assert with_unit("bytes_copied", 2**20) == "1.00 MiB"
    assert with_unit("stall_time_s", 1.234) == "1.23 s" and with_unit("samples", 181) == "181"
    assert with_unit("param_workload_rate_kib_s", 1024) == "1024 KiB/s"    # not "1024.00 s"
    assert with_unit("param_fill_mib", 16) == "16 MiB"


def test_yaml_style_numbers_are_numbers_for_float_parameters() -> None:
    """YAML 1.1 reads ``1e308`` (no dot) as text; a float parameter takes it as a number."""
    from kvmlab.batch.notebooks import check_parameters
    from kvmlab.cli import _parse_params
    params = _parse_params((("ready_timeout", "1e308"), ("after_ready_s", "2e0")), ())
    assert params == {"ready_timeout": "1e308", "after_ready_s": "2e0"}
    check_parameters(NB, params)
    assert params == {"ready_timeout": 1e308, "after_ready_s": 2.0}
    with pytest.raises(BadInput, match="should be float"):
        check_parameters(NB, {"ready_timeout": "soon"})


def test_a_relative_run_path_stays_in_the_runs_folder(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmlab.batch.notebooks import run_path_folder
    monkeypatch.setenv("KVMLAB_RUNS", str(tmp_path / "runs"))
    assert run_path_folder("mine/r1") == tmp_path / "runs" / "mine" / "r1"
    assert run_path_folder(str(tmp_path / "x")) == tmp_path / "x"     # absolute: as given
    for bad in ("../../elsewhere", "..", ".", "a/../../b"):
        with pytest.raises(BadInput, match="leaves the runs folder"):
            run_path_folder(bad)


@pytest.mark.qemu
@pytest.mark.parametrize("size", ["1M", "300k", "64k"])
def test_a_full_disk_under_the_run_is_one_line_and_a_failed_run(size: str,
                                                                   tmp_path: Path) -> None:
    """The runs folder on a small tmpfs: at each size the run ends FAIL (exit 1) with one
    line naming the place and what was being written, never PASS or a traceback, and a
    run.json that exists says ``failed`` with that reason."""
    import subprocess
    import sys
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                   check=True)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "kvmlab", "run", str(NB), "--out", str(mnt / "r"),
             "-p", "image_mib", "32", "-p", "fill_mib", "4", "-p", "speed", "16777216",
             "-p", "after_ready_s", "0.5"], capture_output=True, text=True, timeout=300)
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert "Traceback" not in out and "PASS" not in out, out
        last = res.stdout.strip().splitlines()[-1]
        assert re.fullmatch(rf"FAIL: {mnt}/r: no space left on {mnt}/r while writing "
                            r"(the executed notebook|the HTML export|run\.json|the \w+ "
                            r"journal|\w+\.parquet|its space reserve)", last), out
        meta_file = mnt / "r" / "run.json"
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            assert meta["status"] == "failed" and "no space left on" in meta["error"]
        assert not (mnt / "r" / "01_mirror_basic.html").exists()     # none cut off
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_the_command_never_compiles_jsonschemas_iri_grammar(tmp_path: Path) -> None:
    """A sweep's points are each a ``kvmlab`` process that reads a notebook: none of them
    imports rfc3987_syntax (jsonschema's IRI grammar, ~1.1 s of CPU), while papermill and
    nbformat still load and the command still answers."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    res = subprocess.run([sys.executable, "-m", "kvmlab", "seed", "--workers", "0", "--out",
                          str(tmp_path / "s")], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 2 and "workers=0 must be at least 1" in res.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines()
                if line.startswith("import time:")}
    # (a blocked import is still listed, with nothing below it: lark never loads)
    assert {"nbformat", "jsonschema"} <= imported and "lark" not in imported


def test_seed_bad_input_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    """Every bad ``kvmlab seed`` argument is one line, exit 2, before anything is made: no
    QEMU is needed to say so (in the pure tier QEMU's programs are failing shims).  The
    entry point itself (``python -m kvmlab seed``) is the test above's."""
    out = tmp_path / "seed"
    cases = [
        (["--qemu", "system,nope"], "is not a QEMU build here"),
        (["--qemu", "system,system"], "names a build twice"),
        (["--only", "E9"], "unknown seed case E9"),
        (["--workers", "0"], "workers=0 must be at least 1"),
        (["--accel", "hvf"], "accel='hvf' is not one of auto, kvm, tcg"),
        (["--pdf", "/proc/note.pdf"], "cannot write /proc/note.pdf"),
        (["--pdf", str(tmp_path / "note.html")], "must end in .pdf"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(main, ["seed", "--out", str(out), *args])
        assert res.exit_code == 2, (args, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvmlab: error: ") and message in lines[0]
        assert not res.stdout and not out.exists()
    assert list(tmp_path.iterdir()) == []
