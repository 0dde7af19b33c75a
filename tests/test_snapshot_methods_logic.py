"""Snapshot methods side by side, the pure parts: each copy's classes (``after`` the point
in time included), the guest's writes during a copy against before, the summary per method
and quiesce, the recommendation, the boot manifest, and the lab note's question Q4."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from kvmlab.experiments.consistency import classify
from kvmlab.experiments.snapshot_methods import (
    BEFORE_S,
    _manifest,
    guest_writes,
    recommendation,
    summary,
)
from kvmlab.report import labnote


def _line(name: str, n: int, mono: float, cls: str = "synced", us: int = 8000
          ) -> SimpleNamespace:
    data = {"op": "write", "path": f"/c/o{n}", "n": n, "cls": cls}
    if name == "op":
        data["us"] = us
    return SimpleNamespace(name=name, mono=mono, data=data)


def test_operations_begun_after_the_point_in_time_are_after() -> None:
    lines = [_line("begin", 1, 1.0), _line("op", 1, 1.1),
             _line("begin", 2, 2.0), _line("op", 2, 2.2),       # begun after the point
             _line("begin", 3, 9.0)]                            # after the copy ended
    got = classify(lines, t_cut=1.5, flushes=[], until=5.0)
    assert {n: c for n, (c, _a) in got.items()} == {1: "synced", 2: "after"}
    m = _manifest(got, blocks=2)
    assert set(m.files) == {"/c/o1"} and m.gone == {"/c/o2"}


def test_guest_writes_during_a_copy_against_before() -> None:
    before = [_line("op", n, 10.0 - BEFORE_S + n * BEFORE_S / 10, us=5000)   # the window
              for n in range(10)]
    during = [_line("op", 20 + n, 10.0 + n * 0.1, us=20000 + n * 1000) for n in range(10)]
    written = [_line("op", 40, 10.5, cls="written", us=100)]            # not a synced write
    got = guest_writes(before + during + written, t_start=10.0, t_end=11.0, blocks=4)
    assert got["latency_p50_before_ms"] == 5.0 and got["latency_p95_before_ms"] == 5.0
    assert got["latency_p50_ms"] == pytest.approx(24.5) and got["latency_p95_ms"] > 28
    assert got["write_kib_s"] == 11 * 16 and got["write_kib_s_before"] == pytest.approx(
        10 * 16 / BEFORE_S, abs=0.1)
    empty = guest_writes([], t_start=0.0, t_end=1.0, blocks=4)
    assert empty["latency_p95_ms"] is None and empty["write_kib_s"] == 0


def _copy(method: str, quiesce: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "method": method, "quiesce": quiesce, "needs_recovery": quiesce != "fsfreeze",
        "after_leaked": 0, "promises_kept": True, "point_in_time": quiesce == "fsfreeze",
        "booted": True, "latency_p50_ms": 8.0, "latency_p95_ms": 10.0,
        "latency_p95_before_ms": 9.0, "write_kib_s": 70.0, "write_kib_s_before": 70.0,
        "guest_downtime_s": 0.0 if quiesce == "none" else 0.06, "wall_s": 1.0,
        "host_bytes_written": {"mirror": 17, "backup": 48, "snapshot": 17}[method] << 20}
    row.update(kw)
    return row


def _all(**over: dict[str, object]) -> pd.DataFrame:
    rows = [_copy(m, q, **over.get(f"{m} {q}", {})) for m in ("mirror", "backup", "snapshot")
            for q in ("none", "stop", "fsfreeze")]
    return pd.DataFrame(rows)


def test_summary_and_what_the_numbers_recommend() -> None:
    table = summary(_all())
    assert len(table) == 9 and set(table.columns) >= {"point_in_time", "host_mib_written"}
    text = recommendation(table)
    # a data disk: no downtime, least host bytes (mirror and snapshot tie: named both)
    assert text.startswith("data disk (its application syncs): mirror with quiesce none")
    assert "with snapshot + none as good within the spread" in text
    # a system disk needs fsfreeze here: the only point-in-time copies with no replay
    assert "system disk (every finished operation, no journal to replay): mirror with " \
           "quiesce fsfreeze" in text
    # when nothing qualifies, it says so
    broken = summary(_all(**{f"{m} {q}": {"promises_kept": False} for m in
                             ("mirror", "backup", "snapshot") for q in ("none", "stop",
                                                                        "fsfreeze")}))
    assert recommendation(broken).count("no method and quiesce qualified") == 2
    leaked = summary(_all(**{"mirror none": {"after_leaked": 2}}))
    assert recommendation(leaked).startswith("data disk (its application syncs): snapshot")


def test_q4_holds_or_not_or_is_not_shown() -> None:
    assert labnote.mirror_as_good(_all()).word == "agrees"
    worse = labnote.mirror_as_good(_all(**{"mirror fsfreeze": {"point_in_time": False}}))
    assert worse.word == "disagrees" and "the mirror did worse with quiesce fsfreeze" in \
        worse.text
    assert "What the numbers recommend: data disk" in worse.text
    alone = _all()
    assert labnote.mirror_as_good(alone[alone.method == "mirror"]).word == "not shown"
    assert labnote.mirror_as_good(pd.DataFrame()).word == "not shown"
