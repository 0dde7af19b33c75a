"""Ticks on a fixed grid: what both job samplers (the in-loop one and the recorder's
thread) use to stay at their rate without drifting."""

from __future__ import annotations


class Pacer:
    """Ticks due every *interval* s from *t0*.  A tick already past when asked for is
    skipped (the next one on the grid is due instead) and counted in :attr:`late`."""

    def __init__(self, interval: float, t0: float) -> None:
        self.interval = interval
        self.t0 = t0
        self.k = 0
        self.late = 0

    def next(self, now: float) -> float:
        """When the next tick is due, on the same clock as *t0* and *now*."""
        self.k += 1
        when = self.t0 + self.k * self.interval
        if when < now:
            self.late += 1
            self.k = int((now - self.t0) / self.interval) + 1
            when = self.t0 + self.k * self.interval
        return when
