"""The convergence predictor held out: record its tuning and evaluation cases, score each.

    python benchmarks/predictor.py record tuning       # runs sweeps/predictor-tuning.yaml
    python benchmarks/predictor.py record evaluation   # runs sweeps/predictor-evaluation.yaml
    python benchmarks/predictor.py record migration    # runs sweeps/predictor-migration.yaml
    python benchmarks/predictor.py score               # every set, the current settings

The two sets are different cases (limits, write sizes, bursts, rate changes, a speed
raise): the predictor's settings are chosen by replaying the *tuning* recordings only, and
the figures published are the *evaluation* set's.  The *migration* set (storage
migrations, notebook 14: a disk stream over an nbdkit-limited link and a RAM stream
against a guest that dirties its memory) was recorded after the settings were chosen and
is scored as it is, both streams.  The recordings are committed in
``data/predictor/<set>/`` (samples, events, guest operations and trace of each run; no
console logs or notebooks), so anyone can replay them: ``score`` needs no QEMU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab.analysis import converge
from kvmlab.batch.sweep import SweepSpec, run_sweep
from kvmlab.counts import wilson

HERE = Path(__file__).resolve().parent
SETS = ("tuning", "development", "evaluation", "migration")
#: what a committed recording keeps of each run folder
KEEP = ("run.json", "samples.parquet", "events.parquet", "guest_ops.parquet", "trace.parquet",
        "migration.parquet")


def folder(name: str) -> Path:
    return HERE / "data" / "predictor" / name


def record(name: str, workers: int = 2, out: Path | None = None) -> Path:
    """Run the set's sweep and keep a slim copy of each run under *out* (default: the
    committed folder, replaced)."""
    spec = SweepSpec.from_yaml(HERE / "sweeps" / f"predictor-{name}.yaml")
    dest = out or folder(name)
    work = dest.with_name(dest.name + ".sweep")
    run_sweep(spec, work, workers=workers, report=False, progress=True)
    if dest.exists():
        shutil.rmtree(dest)
    for rj in sorted(work.rglob("run.json")):
        point = rj.relative_to(work).parts[1]           # points/<name>/...
        target = dest / point
        target.mkdir(parents=True, exist_ok=True)
        for f in KEEP:
            if (rj.parent / f).exists():
                shutil.copy2(rj.parent / f, target / f)
    shutil.rmtree(work)
    return dest


def score(name: str, src: Path | None = None, **settings: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every run of the set scored (one row each) and the set's figures."""
    where = src or folder(name)
    if not any(where.rglob("run.json")):
        raise SystemExit(f"{where}: no recorded runs (python benchmarks/predictor.py record {name})")
    table = converge.score_runs(where, **settings)
    summary = converge.accuracy_summary(table)
    k, n = summary["eta_in_range"], summary["eta_ranged"]
    lo, hi = wilson(k, n)
    summary["eta_range_coverage"] = f"{k} of {n}" + (f" (95 % interval {lo:.0%}–{hi:.0%})" if n else "")
    return table, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run a set's sweep (needs QEMU; ~10 min)")
    r.add_argument("set", choices=SETS)
    r.add_argument("--workers", type=int, default=2)
    s = sub.add_parser("score", help="replay the committed recordings")
    s.add_argument("--set", choices=SETS, nargs="*", default=list(SETS))
    args = ap.parse_args(argv)
    if args.cmd == "record":
        print(record(args.set, args.workers))
        return 0
    for name in args.set:
        table, summary = score(name)
        cols = ["run", "qemu", "speed", "workload_rate_kib_s", "link_rate_bps",
                "max_bandwidth", "converged", "time_to_ready_s", "said_diverging_s",
                "false_alarm", "excused_alarms", "eta_error_rel", "eta_in_range",
                "ram_converged", "ram_said_diverging_s", "ram_false_alarm"]
        print(f"## {name}")
        print(table[[c for c in cols if c in table]].to_string(index=False))
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
