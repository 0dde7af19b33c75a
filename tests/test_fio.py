"""The guest's fio workloads, without QEMU: profiles, job files, and the per-second series
read back from a real run's fio lines (tests/data/fio)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from kvmlab.errors import BadInput
from kvmlab.experiments.options import RunOptions
from kvmlab.guest import fio

DATA = Path(__file__).resolve().parent / "data" / "fio"


@pytest.mark.parametrize("name", list(fio.PROFILES))
def test_every_profile_is_a_job_on_the_mirrored_disk_at_its_rate(name: str) -> None:
    job = fio.parse(f"{name}:512")
    assert job is not None and job.name == name and job.rate_kib_s == 512
    text = job.text
    assert f"[{name}]" in text and "directory=/mnt/fio" in text and "direct=1" in text
    rate = next(line for line in text.splitlines() if line.startswith("rate="))
    # the mixed profile shares the rate 70/30 between reads and writes
    assert rate == ("rate=358k,153k" if name == "rand-rw-70-30" else "rate=512k")


def test_a_profile_without_a_rate_gets_the_default() -> None:
    job = fio.parse("db-like")
    assert job is not None and job.rate_kib_s == fio.DEFAULT_RATE_KIB_S
    assert "fsync=1" in job.text and "bs=8k" in job.text


def test_files_is_no_fio() -> None:
    assert fio.parse("files") is None and fio.parse(None) is None


@pytest.mark.parametrize("spec,words", [
    ("rand-write-8k", "is not 'files', a job file"),
    ("rand-write-4k:fast", "must be KiB/s"),
    ("rand-write-4k:0", "must be 4 to"),
    ("/no/such/job.fio", "cannot read fio job file"),
])
def test_a_bad_workload_is_one_line_before_anything_runs(spec: str, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        RunOptions(workload=spec)


def test_fio_on_libvirt_is_refused_up_front() -> None:
    with pytest.raises(BadInput, match="qmp backend"):
        RunOptions(workload="bursty", backend="libvirt")
    assert RunOptions(workload="files", backend="libvirt").workload == "files"


def test_a_job_file_gets_kvmlabs_folder_ahead_of_its_own(tmp_path: Path) -> None:
    f = tmp_path / "mine.fio"
    f.write_text("[global]\nbs=16k\n[mine]\nrw=randwrite\nsize=4m\nrate=100k")
    job = fio.parse(str(f))
    assert job is not None and job.name == "mine.fio" and job.rate_kib_s is None
    assert job.text.startswith("[global]\ndirectory=/mnt/fio\n[global]\nbs=16k\n")
    assert job.text.endswith("rate=100k\n")
    assert RunOptions(workload=f).workload == str(f)       # a Path is kept as text


@pytest.mark.parametrize("body,words", [
    ("[global]\nrw=write\n", "no job section"),
    ("\xff\xfe", "not UTF-8"),
    ("[x]\n" + "#" * (fio.MAX_JOB_BYTES + 1), "is over 64 KiB"),
])
def test_a_job_file_that_is_no_job_is_refused(tmp_path: Path, body: str, words: str) -> None:
    f = tmp_path / "bad.fio"
    f.write_bytes(body.encode("latin-1"))
    with pytest.raises(BadInput, match=words):
        fio.parse(str(f))


@pytest.mark.parametrize("ns", [1, 7, 100, 3288, 52049, 1_000_000, 123_456_789])
def test_a_latency_falls_in_a_bucket_whose_middle_is_within_an_eighth(ns: int) -> None:
    mid = fio.bucket_ns(fio.bucket_of(ns))
    assert abs(mid - ns) <= ns / 8 + 1


def test_percentiles_of_bucket_counts() -> None:
    counts = {fio.bucket_of(1000): 98, fio.bucket_of(50_000): 2}
    assert fio.percentile(counts, 0.5) == pytest.approx(1.0, rel=0.13)      # 1 us
    assert fio.percentile(counts, 0.99) == pytest.approx(50.0, rel=0.13)    # 50 us
    assert math.isnan(fio.percentile({}, 0.5))
    assert fio.parse_buckets("92:1,94:9,92:2") == {92: 3, 94: 9} and fio.parse_buckets("-") == {}


def test_the_recorded_run_reads_back_as_its_rate_per_second() -> None:
    """A real run: fio wrote 256 random 4 KiB blocks a second (rate 1 MiB/s) in the guest
    while a mirror ran; every second's row says so, and only writes."""
    events = pd.read_parquet(DATA / "rand-write-4k-1m-events.parquet")
    io = fio.guest_io(events)
    assert list(io.columns) == fio.COLUMNS
    assert len(io) == (events["name"] == fio.STATUS).sum() - 1
    assert io["write_iops"].median() == pytest.approx(256, rel=0.02)
    assert io["write_bw"].median() == pytest.approx(1 << 20, rel=0.02)
    assert (io["read_iops"] == 0).all() and io["read_p50_us"].isna().all()
    assert (io["write_p50_us"] < io["write_p99_us"]).all()
    assert 100 < io["write_p50_us"].median() < 5000            # TCG: a fraction of a ms
    assert io["t"].is_monotonic_increasing and fio.failure(events) is None


def _guest_events(*rows: tuple[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"t": float(i), "name": n, "data": json.dumps(d)}
                         for i, (n, d) in enumerate(rows)])


def test_fio_failing_in_the_guest_is_said_with_its_words() -> None:
    assert fio.failure(_guest_events((fio.DONE, {"rc": 1, "why": "fio:_unknown_option_rw"}))) \
        == "exit 1: fio:_unknown_option_rw"
    assert fio.failure(_guest_events((fio.ERROR, {"error": "fio", "why": "no-job-or-tools"}))) \
        == "no-job-or-tools"
    assert fio.failure(_guest_events((fio.DONE, {"rc": 0}),
                                     (fio.ERROR, {"error": "mount", "dev": "/dev/vdb"}))) is None
    assert fio.guest_io(pd.DataFrame()).empty


def test_a_status_line_another_writer_ran_into_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """A damaged line: in one run a line's ``w_lat`` ended in ``194Formatting`` (QEMU's
    stdout then shared the console's stream) and the notebook failed.  That line is left
    out, and said so; the next row spans its two seconds (the lines are cumulative), so the
    bytes written are unchanged.  A window ending past it reads the line before."""
    events = pd.read_parquet(DATA / "rand-write-4k-1m-events.parquet")
    whole = fio.guest_io(events)
    i = events.index[events["name"] == fio.STATUS][5]
    rec = json.loads(events.at[i, "data"])
    rec["w_lat"] = str(rec["w_lat"]) + "Formatting"
    damaged = events.copy()
    damaged.at[i, "data"] = json.dumps(rec)
    with caplog.at_level("WARNING", logger="kvmlab.guest.fio"):
        io = fio.guest_io(damaged)
    assert len(io) == len(whole) - 1
    assert io.attrs["damaged_lines"] == 1 and whole.attrs["damaged_lines"] == 0
    assert "1 of fio's" in caplog.text and "left out" in caplog.text
    t = float(events.at[i, "t"])
    t0 = float(events.loc[events["name"] == fio.STATUS, "t"].iloc[0])
    assert fio.window(damaged, t0, t + 0.01) == fio.window(events, t0, t - 0.01)

    def written(df: pd.DataFrame) -> float:     # after the first row (its span is unknown)
        return float((df["write_bw"] * df["guest_ms"].diff() / 1000).iloc[1:].sum())
    assert written(io) == pytest.approx(written(whole), rel=1e-9)
    assert io["guest_ms"].diff().max() == pytest.approx(2 * whole["guest_ms"].diff().median(),
                                                        rel=0.1)


def test_a_window_of_the_recorded_run_is_every_completion_in_it() -> None:
    """The window's percentiles are those of all its completions (bucket deltas of two
    cumulative lines), not a mean of seconds; its IOPS the recorded rate."""
    events = pd.read_parquet(DATA / "rand-write-4k-1m-events.parquet")
    status = events[events["name"] == fio.STATUS]
    t0, t1 = float(status["t"].iloc[10]), float(status["t"].iloc[70])
    w = fio.window(events, t0 + 0.01, t1 + 0.01)
    assert w["seconds"] == pytest.approx(60, abs=0.2)
    assert w["write_iops"] == pytest.approx(256, rel=0.01) and w["read_iops"] == 0
    assert w["write_bytes"] == pytest.approx(60 * 256 * 4096, rel=0.01)
    per_second = fio.guest_io(events)
    inside = per_second[(per_second["t"] > t0 + 0.01) & (per_second["t"] <= t1 + 0.01)]
    assert len(inside) == 60
    assert inside["write_p99_us"].min() <= w["write_p99_us"] <= inside["write_p99_us"].max()
    assert fio.window(events, 0.0, 0.5) == {}                       # before fio said anything
    assert fio.window(events, t0 + 0.01, t0 + 0.02) == {}           # one line: no window


@pytest.mark.parametrize("kw,words", [
    ({"profile": "oltp"}, "profile='oltp' is not one of"),
    ({"granularity": 3000}, "granularity=3000 must be a power of two"),
    ({"speed": -1}, "speed=-1 must be a non-negative integer"),
    ({"fio_mib": 60}, "leave no room on a 64 MiB disk"),
    ({"rate_kib_s": 1}, "workload rate 1 must be"),
])
def test_workload_cost_says_a_bad_value_before_anything_exists(kw: dict, words: str,
                                                                tmp_path: Path) -> None:
    from kvmlab.experiments import workload_cost
    with pytest.raises(BadInput, match=words):
        workload_cost(**kw, options=RunOptions(runs_dir=tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_the_notebooks_grid_is_checked_whole_before_a_run() -> None:
    from kvmlab.lab import suites
    for profiles, grans, speeds, words in (("bursty oltp", "65536", "0", "unknown profile oltp"),
                                           ("bursty", "65536 100000", "0", "power of two"),
                                           ("bursty", "64k", "0", "must be integers"),
                                           ("bursty", "65536", "-5", "non-negative")):
        with pytest.raises(BadInput, match=words):
            suites.workload_grid({}, profiles, grans, speeds)


WORKLOAD_RUNS = DATA.parent / "workloads"


def test_the_workload_tables_rows_are_what_their_recorded_runs_show() -> None:
    """Three runs of the workloads sweep (tests/data/workloads, recorded 2026-12-02 on QEMU
    7.2): each verdict's fio figures are the window between the mirror's start and the
    cancel, recomputed here from the run's own events; its re-copy is the job's length
    growth in its samples; the run's guest_io.parquet is its events read per second."""
    from kvmlab import marks
    from kvmlab.lab import suites
    from kvmlab.store.runs import load_run
    table = suites.workload_rows(WORKLOAD_RUNS)
    assert list(table["profile"]) == ["db-like", "rand-write-4k", "seq-write-1m"]
    for meta_file in sorted(WORKLOAD_RUNS.glob("*/run.json")):
        run = load_run(meta_file.parent)
        v = run.verdict
        assert v is not None
        ev = run.events
        a = float(ev.loc[ev["name"] == marks.MIRROR_START, "t"].iloc[0])
        b = float(ev.loc[ev["name"] == marks.CANCEL, "t"].iloc[0])
        during = fio.window(ev, a, b)
        assert round(during["write_iops"], 1) == pytest.approx(v["iops_during"], abs=0.11)
        assert during["write_bytes"] / 2**20 == pytest.approx(v["guest_written_mib"], abs=0.01)
        js = run.samples[run.samples["t"] <= b]
        grown = (int(js["len"].iloc[-1]) - int(js["len"].iloc[0])) / 2**20
        assert grown == pytest.approx(v["recopied_mib"], abs=0.01)
        assert v["write_amplification"] == pytest.approx(grown / v["guest_written_mib"], abs=0.06)
        pd.testing.assert_frame_equal(run.guest_io, fio.guest_io(ev))
        # the predictor spoke on the two that never got READY, and only there
        assert (v["predictor_diverging_s"] is None) == v["ready"], v
