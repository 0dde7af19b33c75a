"""Counts said honestly: "k of n" with the 95 % Wilson interval, for small n.

A rate from 10 trials is a claim with a wide margin; every published count goes through
:func:`k_of_n` so the margin is printed beside it.
"""

from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of the proportion *k* / *n* ((0, 1) when n is 0)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def k_of_n(k: int, n: int) -> str:
    """``"7 of 10 (95 % interval 40-89 %)"``; ``"0 of 0"`` when nothing was counted."""
    if n <= 0:
        return "0 of 0"
    lo, hi = wilson(k, n)
    return f"{k} of {n} (95 % interval {lo:.0%}-{hi:.0%})"
