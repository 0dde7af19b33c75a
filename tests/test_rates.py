"""The copy rate has one definition (:mod:`kvmlab.rates`): the analysis, the live watch and
the predictor tell the same number for the same samples of a recorded real run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvmlab import analysis, rates
from kvmlab.batch.watch import JobView
from kvmlab.live.predictor import Predictor
from kvmlab.store.runs import load_run

RUN = Path(__file__).parent / "data" / "runs" / "converge-background"


def test_trailing_ramps_up_or_shrinks_its_window() -> None:
    t = np.arange(0.0, 5.01, 0.5)
    y = 100.0 * t                                     # 100 units/s from t=0
    ramp = rates.trailing(t, y, 2.0)
    assert ramp[0] == 0.0 and ramp[2] == pytest.approx(50.0)   # 100 B over a 2 s window
    assert ramp[-1] == pytest.approx(100.0)
    live = rates.trailing(t, y, 2.0, ramp=False)
    assert np.isnan(live[0]) and live[1] == pytest.approx(100.0) and live[-1] == pytest.approx(100.0)
    assert rates.latest(t, y, 2.0) == pytest.approx(100.0)
    assert rates.latest(t[:2], y[:2], 2.0, min_span=1.0) is None     # 0.5 s held: too little
    assert np.isnan(rates.trailing([1.0], [1.0], 2.0)).all()


def test_analysis_watch_and_predictor_agree_on_a_recorded_run() -> None:
    s = analysis.job_samples(load_run(RUN).samples)
    s = s[s["offset"].notna()].reset_index(drop=True)
    window = 1.0
    full = analysis.rates(s, window=window)["copy_rate"].to_numpy()
    view = JobView("drive0")
    checked = 0
    for i, row in s.iterrows():
        view.add({"t": float(row["t"]), "offset": int(row["offset"]), "len": int(row["len"]),
                  "status": "running"})
        if float(row["t"]) - float(s["t"].iloc[0]) < 2 * window:
            continue                                   # the analysis ramps up; live does not
        live = view.rate(window)
        assert live == pytest.approx(max(0.0, full[int(i)]), rel=1e-9, abs=1e-6)
        checked += 1
    assert checked > 50
    # the predictor's copy rate is the same function over the span of samples it keeps
    p = Predictor()
    ts, offs = [], []
    for _, row in s.iterrows():
        out = p.add(float(row["t"]), int(row["offset"]), int(row["len"]))
        ts.append(float(row["t"]))
        offs.append(float(row["offset"]))
    span = ts[-1] - p._rows[0][0]                  # the samples it keeps (a test may look)
    assert out.copy_rate == pytest.approx(max(0.0, rates.latest(ts, offs, span) or 0.0), rel=1e-9)
