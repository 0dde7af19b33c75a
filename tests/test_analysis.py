"""Analysis on synthetic DataFrames with known answers, and on a replayed real run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from kvmlab import analysis, plots  # noqa: E402
from kvmlab.live.record import SAMPLE_COLUMNS  # noqa: E402
from kvmlab.store.runs import load_run  # noqa: E402

DT = 0.1
MIB = 1024 * 1024
REPLAY = Path(__file__).parent / "data" / "runs" / "stall-set-speed"


def synth(t_end: float = 20.0, *, flat: list[tuple[float, float]] = (),
          paused: list[tuple[float, float]] = (), rate: float = 1 * MIB, length: int = 64 * MIB,
          dirty: float = 0.0, status: str = "running") -> pd.DataFrame:
    """A job copying at *rate*, with no progress inside *flat* and *paused* windows."""
    t = np.round(np.arange(0, t_end + DT / 2, DT), 6)
    stopped = np.zeros_like(t, dtype=bool)
    is_paused = np.zeros_like(t, dtype=bool)
    for a, b in flat:
        stopped |= (t >= a) & (t <= b)
    for a, b in paused:
        stopped |= (t >= a) & (t <= b)
        is_paused |= (t >= a) & (t <= b)
    step = np.where(stopped, 0.0, rate * DT)
    step[0] = 0
    offset = np.cumsum(step).astype("int64")
    lens = (length + dirty * t).astype("int64")
    offset = np.minimum(offset, lens)
    df = pd.DataFrame({"t": t, "wall": 1.7e9 + t, "job": "drive0", "type": "mirror",
                       "len": lens, "offset": offset, "remaining": lens - offset,
                       "speed": 0, "busy": True, "paused": is_paused, "ready": False,
                       "status": np.where(is_paused, "paused", status), "io_status": "ok",
                       "actively_synced": None})
    return df[SAMPLE_COLUMNS]


def events(*rows: tuple[float, str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"t": t, "wall": 0.0, "source": "qmp", "name": n,
                          "job": d.get("device", d.get("id")), "status": d.get("status"),
                          "qemu_time": None, "data": json.dumps(d)} for t, n, d in rows],
                        columns=["t", "wall", "source", "name", "job", "status", "qemu_time", "data"])


def test_known_stalls_found_within_one_interval() -> None:
    truth = [(3.0, 6.0), (10.0, 12.5)]
    st = analysis.stalls(synth(flat=truth), min_duration=1.0)
    assert len(st) == 2
    for (a, b), (_, row) in zip(truth, st.iterrows(), strict=True):
        assert abs(row["start"] - a) <= DT + 1e-9
        assert abs(row["end"] - b) <= DT + 1e-9
        assert row["kind"] == "stall"


def test_no_stall_while_offset_advances() -> None:
    assert analysis.stalls(synth(), min_duration=0.5).empty
    slow = synth(rate=200 * 1024)  # slow but steady: 20 KiB per sample, 200 KiB/s
    assert analysis.stalls(slow, min_duration=1.0, threshold=64 * 1024).empty


def test_short_flat_stretch_is_not_a_stall() -> None:
    assert analysis.stalls(synth(flat=[(5.0, 5.8)]), min_duration=1.0).empty


def test_paused_is_reported_as_paused_not_stall() -> None:
    s = synth(paused=[(4.0, 8.0)])
    assert analysis.stalls(s, min_duration=1.0).empty
    pa = analysis.paused_periods(s)
    assert len(pa) == 1
    assert abs(pa["start"].iloc[0] - 4.0) <= DT and abs(pa["end"].iloc[0] - 8.0) <= DT


def test_in_sync_job_is_not_stalled() -> None:
    s = synth(t_end=10, length=2 * MIB)  # reaches len after 2 s, then remaining == 0
    assert analysis.stalls(s, min_duration=1.0).empty


def test_rates_match_the_copy_rate() -> None:
    r = analysis.rates(synth(rate=2 * MIB, length=1024 * MIB, dirty=0.5 * MIB), window=1.0)
    steady = r[r.t > 2]
    assert np.allclose(steady["copy_rate"], 2 * MIB, rtol=0.02)
    assert np.allclose(steady["dirty_rate"], 0.5 * MIB, rtol=0.05)


def test_guest_write_rate_from_dd_lines() -> None:
    ops = pd.DataFrame({"t": np.arange(0, 10, 0.5), "op": "dd", "size": 512 * 1024,
                        "machine": "source"})
    g = analysis.guest_write_rate(ops, window=2.0)
    assert np.isclose(g["write_rate"].iloc[-1], 1 * MIB, rtol=0.3)


def test_convergence_verdicts() -> None:
    conv = analysis.convergence
    assert conv(synth(rate=1 * MIB, length=64 * MIB))["verdict"] == "converging"
    c = conv(synth(t_end=20, rate=1 * MIB, length=64 * MIB))
    assert c["eta_s"] == pytest.approx(44, rel=0.05)  # 44 MiB left at 1 MiB/s
    assert conv(synth(rate=1 * MIB, length=4 * MIB, dirty=3 * MIB))["verdict"] == "diverging"
    assert conv(synth(flat=[(12.0, 20.0)]))["verdict"] == "stalled"
    ready = events((5.0, "BLOCK_JOB_READY", {"device": "drive0"}))
    assert conv(synth(), ready)["verdict"] == "converged"
    failed = events((6.0, "BLOCK_JOB_COMPLETED", {"device": "drive0", "error": "Input/output error"}))
    out = conv(synth(), failed)
    assert out["verdict"] == "failed" and "Input/output" in out["error"]


def test_replay_of_real_stall_run() -> None:
    """A run recorded from QEMU 7.2: 4 MiB/s, set-speed 1 B/s for 3 s, 4 MiB/s again."""
    run = load_run(REPLAY)
    marks = run.events[run.events.name == "set_speed"]["t"].tolist()
    st = analysis.stalls(run.samples, min_duration=1.0)
    assert len(st) == 1
    assert abs(st["start"].iloc[0] - marks[0]) <= 0.3
    assert abs(st["end"].iloc[0] - marks[1]) <= 0.3
    assert st["speed"].iloc[0] == 1
    row = analysis.summarize(run)
    assert row["convergence"] == "converged" and row["stall_count"] == 1
    assert row["time_to_ready_s"] == pytest.approx(9.0, abs=1.0)
    assert row["bytes_copied"] >= 24 * MIB and row["image_bytes"] == 64 * MIB
    assert row["param_speed"] == 4 * MIB
    assert 3.5 * MIB < row["peak_copy_rate"] < 4.5 * MIB


def test_plots_render_headless_and_save(tmp_path: Path) -> None:
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(REPLAY, run_dir)
    run = load_run(run_dir)
    names = plots.save_all(run)
    for n in names:
        assert (run_dir / n).stat().st_size > 10_000
    fig = plots.dashboard(run, log=True)
    axes = fig.get_axes()
    assert len(axes) == 4
    assert axes[1].get_yscale() == "log"
    assert all(ax.get_ylabel() for ax in axes) and axes[3].get_xlabel()
    # the stall is shaded on every panel and the speed changes are labelled
    for ax in axes:
        assert any(p.get_label() == "stall" for p in ax.get_legend().get_patches())
    texts = [t.get_text() for t in axes[0].texts]
    assert "speed 1 B/s" in texts and "speed 4 MiB/s" in texts
    import matplotlib.pyplot as plt
    plt.close("all")


def test_plot_into_callers_axes() -> None:
    import matplotlib.pyplot as plt
    run = load_run(REPLAY)
    fig, ax = plt.subplots()
    assert plots.convergence(run.samples, run.events, ax=ax) is fig
    assert ax.get_title().startswith("Convergence")
    plt.close(fig)


def test_one_job_id_run_twice_is_split_into_instances() -> None:
    """E7 recorded from QEMU 7.2: a shallow mirror of drive0, then a full one, same id."""
    run = load_run(Path(__file__).parent / "data" / "runs" / "shallow-then-full")
    inst = analysis.job_instances(run.samples, run.events)
    assert [j for j, _, _ in inst] == ["drive0", "drive0"]
    assert inst[0][2] < inst[1][1]
    v = run.verdict
    first, second = (analysis.summarize(run, instance=i) for i in (0, 1))
    assert first["bytes_copied"] == v["shallow_bytes_copied"]
    assert second["bytes_copied"] == v["full_bytes_copied"]
    assert first["convergence"] == second["convergence"] == "converged"
    assert analysis.summarize(run, instance=2)["jobs"] == 2


def test_copy_rate_is_a_true_time_window_over_chunks() -> None:
    """QEMU copies 4 MiB chunks once a second at a 4 MiB/s limit: no window may read the
    first chunk as 40 MiB/s (the old span-of-samples rate did), and the rate keeps to the
    limit once a window spans several chunks."""
    t = np.round(np.arange(0, 20.01, DT), 6)
    offset = (np.floor(t) * 4 * MIB).astype("int64")            # a chunk at every whole second
    df = synth(20.0)
    df["offset"], df["remaining"] = offset, df["len"] - offset
    r = analysis.rates(df, window=2.0)
    assert r["copy_rate"].max() <= 4 * MIB + 1                   # two chunks in any 2 s window
    steady = r[r["t"] >= 4]["copy_rate"]
    assert steady.min() >= 2 * MIB - 1 and abs(steady.mean() - 4 * MIB) < 0.5 * MIB


def test_peak_copy_rate_is_never_below_the_mean() -> None:
    """A job that is over in 0.5 s (speed 0), shorter than the 2 s rate window."""
    df = synth(0.5, rate=64 * MIB)
    ev = events((0.0, "JOB_STATUS_CHANGE", {"id": "drive0", "status": "created"}),
                (0.5, "BLOCK_JOB_READY", {"device": "drive0", "len": 64 * MIB}),
                (0.5, "BLOCK_JOB_COMPLETED", {"device": "drive0", "offset": 32 * MIB}))
    from kvmlab.store.runs import RunData
    ops = pd.DataFrame(columns=["t", "wall", "op", "path", "size", "sha256", "round", "guest_t",
                                "machine"])
    sizes = pd.DataFrame(columns=["t", "wall", "label", "path", "apparent", "allocated"])
    run = RunData(Path("."), {"params": {}},
                  {"samples": df, "events": ev, "guest_ops": ops, "sizes": sizes})
    row = analysis.summarize(run)
    assert row["peak_copy_rate"] >= row["mean_copy_rate"] > 0


def test_a_recorder_on_its_own_makes_a_run(tmp_path: Path) -> None:
    """As the README shows it: Recorder("data/runs/mine") with no experiment around it."""
    from click.testing import CliRunner

    from kvmlab.cli import main
    from kvmlab.live.record import Recorder
    with Recorder(tmp_path / "mine", interval=0.05) as rec:
        rec.mark("cancel")
    run = load_run(tmp_path / "mine")
    assert run.meta["status"] == "done" and run.meta["experiment"] == "recording"
    assert "cancel" in set(run.events["name"])
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "mine"), "--no-plots"])
    assert res.exit_code == 0, res.output
