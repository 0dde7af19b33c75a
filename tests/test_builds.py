"""QEMU builds side by side: naming, installing, capabilities, and experiments on 10.0.

The pure tests read capabilities from recorded ``query-qmp-schema`` answers of Debian's
QEMU 7.2 and of 10.0 (tests/data/qmp-schema-*.json.gz, saved from the real builds); the
integration tests run the real 10.0 build that ``make test`` installs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlab import experiments as ex
from kvmlab.errors import BadInput, ToolError
from kvmlab.experiments.options import RunOptions
from kvmlab.faults import NbdServer
from kvmlab.qemu import builds, images
from kvmlab.qemu import install as builds_install
from kvmlab.qemu.caps import read_capabilities
from kvmlab.vm import qemu_probe

DATA = Path(__file__).parent / "data"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NEW = "10.0"


def recorded(version: str) -> tuple[dict, list]:  # type: ignore[type-arg]
    with gzip.open(DATA / f"qmp-schema-{version}.json.gz", "rt") as f:
        d = json.load(f)
    return d["query-version"], d["query-qmp-schema"]


# -- pure: names, capabilities from recorded schemas, installs that must not happen -----
def test_capabilities_from_recorded_schemas() -> None:
    old = read_capabilities(*recorded("7.2"))
    new = read_capabilities(*recorded("10.0"))
    assert old.version.startswith("7.2.") and new.version == "10.0.2"
    assert old.copy_modes == new.copy_modes == ("background", "write-blocking")
    assert (old.block_job_change, new.block_job_change) == (False, True)
    # 8.2 made BlockJobInfo a union: actively-synced is in its mirror branch
    assert (old.actively_synced, new.actively_synced) == (False, True)
    assert {"report", "ignore", "enospc", "stop"} <= set(new.error_policies)
    assert "copy-mode" in old.mirror_args and old.trace_control and new.commands > old.commands


@pytest.mark.parametrize("value,msg", [
    ("nosuch", r"qemu='nosuch' is not a QEMU build here; builds: system"),
    ("/no/such/qemu", r"qemu='/no/such/qemu': no such executable; builds: system"),
    ("/bin/true", r"qemu='/bin/true' is not a QEMU binary; builds: system"),
    (3, r"qemu=3 must be a build name")])
def test_bad_qemu_is_one_line_and_creates_nothing(value: object, msg: str,
                                                  tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=msg) as err:
        ex.mirror_basic(options=RunOptions(qemu=value, runs_dir=tmp_path / "runs"))  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_yaml_number_names_a_build() -> None:
    """``-p qemu 10.0`` and ``--grid qemu=system,10.0`` parse 10.0 as a number."""
    assert builds.check_name("system") == "system"
    with pytest.raises(BadInput, match="qemu='9.1' is not a QEMU build"):
        builds.check_name(9.1)


def test_partial_install_never_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMLAB_DATA", str(tmp_path))
    partial = tmp_path / "qemu" / ".partial-10.0-abc123"
    partial.mkdir(parents=True)
    (partial / builds.BUILD_FILE).write_text("{}")
    (tmp_path / "qemu" / "11.0").mkdir()            # no build.json: not installed either
    assert builds.installed_names() == [] and builds.names() == ["system"]


@pytest.mark.parametrize("args,msg", [
    (["add", "10"], "QEMU version '10' must look like 10.0"),
    (["add", "latest"], "must look like 10.0"),
    (["remove", "system"], "kvmlab does not remove it"),
    (["remove", "9.9"], "no QEMU build named '9.9'; installed: none")])
def test_qemu_command_bad_input(args: list[str], msg: str, tmp_path: Path) -> None:
    env = {**os.environ, "KVMLAB_DATA": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "kvmlab", "qemu", *args], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("kvmlab: error: ") and msg in line
    assert not (tmp_path / "data").exists()


# -- integration: apt, the real builds --------------------------------------------------
@pytest.mark.qemu
def test_add_unknown_version_names_what_the_suite_offers(tmp_path: Path) -> None:
    env = {**os.environ, "KVMLAB_DATA": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "kvmlab", "qemu", "add", "99.9"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("kvmlab: error: QEMU 99.9 is not offered: Debian's "
                           "bookworm-backports has 10.0."), last
    assert not (tmp_path / "data").exists()


@pytest.mark.qemu
def test_failed_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("KVMLAB_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(ToolError, match="apt-get failed"):
        builds_install.add(NEW)
    assert not (tmp_path / "data").exists()


@pytest.mark.qemu
def test_installed_build_and_capability_probe_on_both() -> None:
    assert NEW in builds.names(), "make test installs 10.0 (make qemu-builds)"
    new = builds.resolve(NEW)
    assert new.version == "10.0.2" and new.module_dir and (new.module_dir / "block-nfs.so").exists()
    for prog in ("qemu-img", "qemu-io", "qemu-storage-daemon"):
        assert new.tool(prog).startswith(str(new.root))
    from kvmlab.vm.qemu_probe import probe
    old_caps, new_caps = probe(builds.resolve("system")), probe(new)
    assert old_caps.version.startswith("7.2") and not old_caps.block_job_change
    assert new_caps.version == "10.0.2" and new_caps.block_job_change and new_caps.actively_synced
    assert qemu_probe.capabilities(new) == new_caps                      # the cached answer is the probed one
    r = subprocess.run([sys.executable, "-m", "kvmlab", "qemu", "list"], capture_output=True,
                       text=True, timeout=120, check=True)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("system   QEMU 7.2") and "block-job-change: no" in lines[0]
    assert any(ln.startswith("10.0     QEMU 10.0.2") and "block-job-change: yes" in ln
               for ln in lines)
    again = subprocess.run([sys.executable, "-m", "kvmlab", "qemu", "add", NEW],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "installed already" in again.stderr


@pytest.mark.qemu
def test_tools_follow_the_build(scratch: Path) -> None:
    """Images made under using("10.0") come from 10.0's qemu-img; the NBD daemon is 10.0's."""
    assert "version 7.2" in images.qemu_img(["--version"])
    with builds.using(NEW) as b:
        assert "version 10.0.2" in images.qemu_img(["--version"])
        images.create(scratch / "a.qcow2", 16 << 20, "qcow2")
        assert images.info(scratch / "a.qcow2")["format"] == "qcow2"
        with NbdServer(scratch / "a.qcow2") as nbd:
            assert nbd.daemon is not None and nbd.daemon.command[0] == b.tool(
                "qemu-storage-daemon")
    assert builds.current().name == "system"


@pytest.mark.qemu
def test_e1_on_10_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "e1"
    r = subprocess.run([sys.executable, "-m", "kvmlab", "run", str(NOTEBOOKS / "01_mirror_basic.ipynb"),
                        "-p", "qemu", NEW, "-p", "accel", "tcg", "-p", "image_mib", "32",
                        "-p", "fill_mib", "4", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS mirror_basic" in r.stdout
    meta = json.loads((out / "run.json").read_text())
    assert meta["params"]["qemu"] == NEW and meta["qemu"]["version"] == "10.0.2"
    assert meta["qemu"]["caps"]["block_job_change"] is True
    assert "10.0.2" in meta["provenance"]["qemu_version"]
    for m in meta["machines"].values():
        assert m["command"][0] == meta["qemu"]["emulator"] and "-L" in m["command"]


@pytest.mark.qemu
def test_e4_on_10(opts: RunOptions) -> None:
    r = ex.pivot(paused=True, image_mib=32, fill_mib=4, options=opts.replace(qemu=NEW))
    assert r.passed, r.verdict
    assert r.data.meta["qemu"]["version"] == "10.0.2"
    assert r.verdict["on_target"] and not r.verdict["info_block_shows_original"]


@pytest.mark.qemu
def test_target_fault_on_10(opts: RunOptions) -> None:
    r = ex.target_fault(fault="eio", on_target_error="stop", image_mib=32, fill_mib=4,
                        options=opts.replace(qemu=NEW))
    assert r.passed, r.verdict
    assert r.verdict["behaviour"] == "paused" and r.verdict["error_events"] >= 1
    assert r.data.meta["qemu"]["version"] == "10.0.2"


@pytest.mark.qemu
@pytest.mark.xdist_group("libvirt")
def test_libvirt_runs_the_other_build(scratch: Path) -> None:
    """libvirt 9.0 takes 10.0 as the domain's <emulator> through the build's wrapper (its
    capability probe loads every module, so it needs the build's module dir)."""
    from kvmlab.vm.libvirt_lab import LibvirtMachine
    images.make_guest_disk(scratch / "d.qcow2", 32)
    with LibvirtMachine(scratch / "d.qcow2", qemu=NEW, name="kvmlab-build") as vm:
        vm.wait_guest("ready", timeout=120)
        assert "10.0.2" in vm.hmp("info version")
        wrapper = builds.resolve(NEW).libvirt_emulator()
        assert f"<emulator>{wrapper}</emulator>" in vm.backend.dom.XMLDesc()  # type: ignore[attr-defined]


def test_sweep_grids_over_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--grid qemu=system,10.0``: YAML reads 10.0 as a number, the points get the name."""
    from kvmlab.batch.sweep import SweepSpec, parse_grid
    monkeypatch.setenv("KVMLAB_DATA", str(tmp_path))
    fake = tmp_path / "qemu" / "10.0"
    fake.mkdir(parents=True)
    (fake / builds.BUILD_FILE).write_text('{"name": "10.0"}')
    spec = SweepSpec(NOTEBOOKS / "01_mirror_basic.ipynb", grid=parse_grid(["qemu=system,10.0"]))
    assert [p.params["qemu"] for p in spec.plan()] == ["system", "10.0"]
    bad = SweepSpec(NOTEBOOKS / "01_mirror_basic.ipynb", grid=parse_grid(["qemu=system,9.1"]))
    with pytest.raises(BadInput, match="qemu='9.1' is not a QEMU build here; builds: system, 10.0"):
        bad.plan()


# -- the comparison, on behaviour rows (pure) -------------------------------------------
def test_side_by_side_flags_real_differences_only() -> None:
    from kvmlab.lab.compare import Row, differences, side_by_side, strip_paths
    info = "drive0 (#block629): /data/scratch/20261129-1/x-mirror.img (qcow2)"
    assert strip_paths(info) == "drive0 (#block): x-mirror.img (qcow2)"

    def runs(rows: list[tuple[str, str, list]]) -> list[list[Row]]:
        n = len(rows[0][2])
        return [[Row(c, m, vals[i]) for c, m, vals in rows] for i in range(n)]
    old = runs([("E1", "verdict", ["PASS"] * 5),
                ("E1", "time_to_ready_s", [1.0, 1.1, 0.9, 1.0, 1.2]),
                ("E1", "MiB copied", [10.0] * 5),
                # QEMU's ENOSPC count depends on the requests in flight: 8-24 on both builds
                ("enospc", "BLOCK_JOB_ERROR events", [24, 9, 8, 24, 24]),
                ("eio:stop", "error actions", ["stop"] * 5),
                ("E4", "info block after pivot", [strip_paths(info)] * 5),
                ("thr", "rate_over_speed", [1.02, 1.01, 1.03, 1.0, 1.02])])
    new = runs([("E1", "verdict", ["PASS"] * 5),
                ("E1", "time_to_ready_s", [1.3, 1.4, 1.3, 1.5, 1.3]),    # apart, but < 0.5 s
                ("E1", "MiB copied", [10.5] * 5),
                ("enospc", "BLOCK_JOB_ERROR events", [9, 9, 24, 24, 16]),
                ("eio:stop", "error actions", ["report"] * 4 + ["stop"]),
                ("E4", "info block after pivot",
                 [strip_paths(info.replace("629", "614"))] * 5),
                ("thr", "rate_over_speed", [1.6, 1.7, 1.6, 1.65, 1.6])])
    table = side_by_side({"system": old, "10.0": new})
    assert list(table.columns) == ["case", "measure", "system", "10.0", "differs", "why"]
    got = {(r.case, r.measure) for r in differences(table).itertuples()}
    assert got == {("thr", "rate_over_speed")}
    row = table.set_index(["case", "measure"])
    assert row.loc[("enospc", "BLOCK_JOB_ERROR events"), "system"] == "8–24 (n=5)"
    assert row.loc[("enospc", "BLOCK_JOB_ERROR events"), "why"] == "varies within a build"
    assert row.loc[("eio:stop", "error actions"), "10.0"] == "report ×4, stop ×1"
    assert row.loc[("E4", "info block after pivot"), "why"] == "same"
    # text that never meets is a difference; one run a side is never judged
    table = side_by_side({"a": runs([("x", "job end", ["completed"] * 5)]),
                          "b": runs([("x", "job end", ["cancelled"] * 5)])})
    assert table["differs"].tolist() == [True]
    one = side_by_side({"a": old[0], "b": new[0]})
    assert not one["differs"].any()
    assert set(one["why"]) == {"same", "not judged: fewer than 5 runs on a build"}


def test_rows_kept_apart_are_tabulated_as_one(tmp_path: Path) -> None:
    """A sweep's points each keep one run's rows (behaviours.json); read back together
    they make the same table as the runs made in one notebook, with 5 runs a side."""
    from kvmlab.errors import BadInput
    from kvmlab.lab.compare import Row, rows_in, save_rows, side_by_side

    def run(k: int, build: str) -> list[Row]:
        ends = "completed" if build == "a" else "cancelled"
        return [Row("x", "job end", ends, path=f"/runs/{build}{k}"),
                Row("enospc", "BLOCK_JOB_ERROR events", [24, 9, 8, 24, 24][k]),
                Row("E1", "time_to_ready_s", 2.2 + k / 100)]
    together = {b: [run(k, b) for k in range(5)] for b in ("a", "b")}
    for k in range(5):                        # points: one run of one build each
        for b in ("a", "b"):
            point = tmp_path / "points" / f"builds-{b}_r{k}" / "run-1"
            point.mkdir(parents=True)
            save_rows({b: [run(k, b)]}, point)
    back = rows_in(tmp_path)
    assert list(back) == ["a", "b"] and [len(v) for v in back.values()] == [5, 5]
    assert back["a"][3][0].folder == "/runs/a3"
    assert side_by_side(back).equals(side_by_side(together))
    t = side_by_side(back).set_index(["case", "measure"])
    assert t.loc[("x", "job end"), "differs"]
    assert t.loc[("enospc", "BLOCK_JOB_ERROR events"), "why"] == "varies within a build"
    (tmp_path / "points" / "bad").mkdir()
    (tmp_path / "points" / "bad" / "behaviours.json").write_text("[1, 2]")
    with pytest.raises(BadInput, match="not a file of behaviour rows"):
        rows_in(tmp_path)


@pytest.mark.qemu
def test_panel_on_the_other_build(tmp_path: Path) -> None:
    """The panel's lab VM on 10.0: its status names the QEMU, a job's run records the build."""
    import time

    from kvmlab.lab.widgets import MirrorPanel
    p = MirrorPanel.lab(accel="tcg", fill_mib=4, image_mib=32, runs_dir=tmp_path, refresh=0.25,
                        qemu=NEW)
    try:
        deadline = time.monotonic() + 15
        while "QEMU 10.0.2" not in p.status.value and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "QEMU 10.0.2" in p.status.value
        p.click("start")
        deadline = time.monotonic() + 60
        while "ready" not in p.status.value and time.monotonic() < deadline:
            time.sleep(0.1)
        p.click("cancel")
        fin = p.session.wait_finished(30)
        assert fin.error is None
        assert json.loads((fin.run_path / "run.json").read_text())["qemu"]["version"] == "10.0.2"
    finally:
        p.close()
