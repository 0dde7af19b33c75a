"""The benchmark script executes end to end at smoke size (it measures; it asserts no target)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_smoke(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    b = data["benchmarks"]
    assert set(b) == {"sample_cost", "recording_overhead", "throughput", "end_to_end", "sweep"}
    assert b["sample_cost"]["virsh_wall_s"] > 0 and b["sample_cost"]["qmp_wall_s"] > 0
    assert b["throughput"]["qemu_img_convert_s"] > 0
    assert b["end_to_end"]["all_passed"] is True
    assert b["sweep"]["wall_1_workers_s"] > 0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## sample cost" in report and "Target:" in report and data["smoke"] is True
