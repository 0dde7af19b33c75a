"""Units of kvmlab's summary values and parameters, from their names: one set of rules for
the command line (``1 B/s``, ``4.00 MiB/s``, ``unlimited``) and the plots' axes
(``speed limit (MiB/s)``)."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024

#: readable names for the parameters and metrics sweeps plot
NAMES = {"speed": "speed limit", "workload_rate_kib_s": "guest write rate",
         "time_to_ready_s": "time to READY", "mean_copy_rate": "mean copy rate",
         "peak_copy_rate": "peak copy rate", "buf_size": "copy buffer",
         "granularity": "bitmap granularity", "bytes_copied": "bytes copied",
         "stall_time_s": "time stalled", "image_mib": "disk size", "fill_mib": "data on disk"}


def unit_of(key: str) -> tuple[str, float]:
    """(unit, divisor) for a value named *key*: bytes in MiB, buffers in KiB, rates and
    speed limits (``*_bps`` too) in MiB/s, ``*_kib_s`` in KiB/s, ``*_mib`` in MiB, times
    in s; ("", 1) when the name does not tell."""
    if key.endswith("_kib_s"):
        return "KiB/s", 1.0
    if key.endswith(("speed", "_rate", "_bps")) or key == "remaining_slope":
        return "MiB/s", MIB
    if key.endswith(("buf_size", "granularity")):
        return "KiB", 1024.0
    if key.startswith("bytes") or key.endswith(("_bytes", "_len")):
        return "MiB", MIB
    if key.endswith("_mib"):
        return "MiB", 1.0
    if key.endswith(("_s", "interval")):
        return "s", 1.0
    return "", 1.0


def is_speed(key: str) -> bool:
    """A speed limit, where 0 means unlimited."""
    return key.endswith("speed")


def axis_label(key: str) -> str:
    """``speed`` -> ``speed limit (MiB/s)``."""
    name = NAMES.get(key, key.replace("_", " "))
    unit, _ = unit_of(key)
    return f"{name} ({unit})" if unit else name


def with_unit(key: str, value: Any) -> str:
    """A summary value as a person reads it (a speed of 0 is "unlimited"; a crawl is in
    B/s, not 0.00 MiB/s)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    value = value + 0.0 if isinstance(value, float) else value     # no "-0.00"
    if is_speed(key) and value == 0:
        return "unlimited"
    unit, div = unit_of(key)
    if unit == "MiB/s" and abs(value) < 10 * 1024:
        return f"{value:.0f} B/s".replace("-0 ", "0 ")
    if unit in ("MiB/s", "MiB") and div == MIB:
        return f"{value / div:.2f} {unit}"
    if unit == "KiB":
        return f"{value / div:g} KiB"
    if unit == "s":
        return f"{value:.2f} s" if key.endswith("_s") else f"{value:g} s"
    if unit:
        return f"{value:g} {unit}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
