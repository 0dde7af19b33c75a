"""A sweep folder on disk, as sweeps write it and reports read it: ``points/<name>/``
with each point's ``point.json`` (its parameters, status, error, wall time) and the run
folders it recorded.  Readers (the lab note, ``kvmlab report``) need no sweep machinery."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PointRecord", "read_points"]


@dataclass(frozen=True)
class PointRecord:
    """A sweep point as its ``point.json`` left it (``status`` ``unreadable`` when that
    file could not be read)."""

    name: str
    folder: Path
    record: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.record.get("params") or {})

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    @property
    def error(self) -> str | None:
        err = self.record.get("error")
        return None if err is None else str(err)

    def runs(self) -> list[Path]:
        """The run folders the point recorded (``run.json`` anywhere below it)."""
        return [rj.parent for rj in sorted(self.folder.rglob("run.json"))]


def read_points(folder: str | Path, names: Iterable[str] | None = None) -> list[PointRecord]:
    """The points of the sweep in *folder* that have a ``point.json``: all of them by
    name, or those of *names* in that order (a plan's)."""
    points = Path(folder, "points")
    files = [points / str(n) / "point.json" for n in names] if names is not None \
        else sorted(points.glob("*/point.json"))
    out = []
    for pj in files:
        if not pj.is_file():
            continue
        try:
            record = json.loads(pj.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError):
            record = {"status": "unreadable", "error": "point.json unreadable"}
        out.append(PointRecord(pj.parent.name, pj.parent, record))
    return out
