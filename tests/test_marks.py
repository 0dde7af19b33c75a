"""The names of marks and events come from kvmlab.marks, and windows are told apart."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd

from kvmlab import analysis, marks, plots

PACKAGE = Path(marks.__file__).parent


def _mark_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in ("mark", "_mark", "marked"):
                    calls.append((str(path.relative_to(PACKAGE)), node.lineno, node))
    return calls


def test_no_mark_is_a_bare_string() -> None:
    calls = _mark_calls()
    assert len(calls) > 40                                  # the walk found the marks
    bare = [f"{f}:{line}" for f, line, c in calls
            if any(isinstance(a, (ast.Constant, ast.JoinedStr)) for a in c.args)]
    assert not bare, f"mark names as bare strings (use kvmlab.marks): {bare}"


def test_labels_name_known_events() -> None:
    assert set(plots.EVENT_LABELS) <= marks.ALL_MARKS | {
        marks.BLOCK_JOB_READY, marks.BLOCK_IO_ERROR, *marks.JOB_ENDED, marks.BLOCK_JOB_ERROR}
    assert "fault_start" not in plots.EVENT_LABELS          # never emitted


def _events(*names: tuple[float, str]) -> pd.DataFrame:
    return pd.DataFrame([{"t": t, "wall": 0.0, "source": "kvmlab", "name": n, "job": None,
                          "status": None, "qemu_time": None, "data": json.dumps({})}
                         for t, n in names])


def test_fsfreeze_is_a_window_but_not_a_fault() -> None:
    ev = _events((1.0, marks.start(marks.FSFREEZE)), (1.2, marks.end(marks.FSFREEZE)),
                 (2.0, marks.start(marks.NFS_OUTAGE)), (5.0, marks.end(marks.NFS_OUTAGE)),
                 (6.0, marks.RECORDER_STOP), (0.0, marks.RECORDER_START))
    faults = analysis.fault_windows(ev)
    assert list(faults["name"]) == ["nfs_outage"] and faults["duration"].iloc[0] == 3.0
    assert list(analysis.windows(ev)["name"]) == ["fsfreeze", "nfs_outage"]
