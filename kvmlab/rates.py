"""How fast a counter moves: the one definition of a job's copy rate (and of every other
rate over a trailing time window), used by the analysis, the live predictor and the live
watch alike, so the three never tell a user different numbers for the same samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def trailing(t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
             window: float, *, ramp: bool = True) -> np.ndarray:
    """d y/dt at every sample, over the trailing *window* seconds: (y(t) - y(t - w)) / w.

    y between samples is interpolated linearly.  Before the first sample:
    - *ramp* (the default, for whole recordings): y is taken as its first value (nothing
      happened before the series began), so the rate ramps up over the first window
      instead of dividing an early chunk by a tiny span; every value averages exactly
      *window* seconds;
    - not *ramp* (for live readers that start mid-job): the window shrinks to the samples
      held, w = min(window, t - t[0]), and the first sample has no rate (nan).
    """
    tt = np.asarray(t, dtype="float64")
    yy = np.asarray(y, dtype="float64")
    if len(tt) < 2 or window <= 0:
        return np.full(len(tt), np.nan)
    if ramp:
        w = np.full(len(tt), float(window))
    else:
        w = np.minimum(float(window), tt - tt[0])
    y0 = np.interp(tt - w, tt, yy, left=yy[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (yy - y0) / w
    return np.asarray(np.where(w > 0, out, np.nan), dtype="float64")


def latest(t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
           window: float, *, min_span: float = 0.0) -> float | None:
    """The rate at the last sample, as :func:`trailing` with ``ramp=False``; None when the
    samples span less than *min_span* seconds (too little to say)."""
    if len(t) < 2 or float(t[-1]) - float(t[0]) < max(min_span, 1e-9):
        return None
    n = len(t)
    # only the samples inside the window (and the one before it) matter
    lo = max(0, int(np.searchsorted(np.asarray(t, dtype="float64"), float(t[-1]) - window)) - 1)
    r = float(trailing(t[lo:n], y[lo:n], window, ramp=False)[-1])
    return None if np.isnan(r) else r
