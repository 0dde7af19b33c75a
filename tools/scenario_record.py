"""Write the scenario catalogue's recorded verdicts for the pure tests.

    python tools/scenario_record.py data/sweeps/<a scenarios sweep>

reads every scenario run under the folder(s) (one per scenario and build: a run of
``notebooks/sweeps/scenarios.yaml``) and writes ``tests/data/scenarios/<major.minor>.json``:
each scenario's verdict as QEMU produced it, without the verifier's long lists (the
scenarios not run there keep their records).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvmlab.lab.suites import scenario_results_in

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "scenarios"
#: verdict fields too long, or too local, to keep (the verifier's items, scratch paths)
DROP = ("bad_items", "in_flight_found", "images")


def main(folders: list[str]) -> None:
    by_version: dict[str, dict[str, dict[str, object]]] = {}
    for folder in folders:
        for reps in scenario_results_in(folder).values():
            for results in reps:
                for name, r in results.items():
                    version = str(r.data.meta["qemu"]["version"]).split()[-1]
                    short = ".".join(version.split(".")[:2])
                    verdict = {k: v for k, v in r.verdict.items() if k not in DROP}
                    by_version.setdefault(short, {})[name] = verdict
    OUT.mkdir(parents=True, exist_ok=True)
    for short, verdicts in sorted(by_version.items()):
        path = OUT / f"{short}.json"
        # the scenarios run here replace their records; the others are kept
        kept = json.loads(path.read_text()) if path.exists() else {}
        verdicts = {**kept, **verdicts}
        path.write_text(json.dumps(dict(sorted(verdicts.items())), indent=1, default=str) + "\n")
        print(f"{path}: {len(verdicts)} scenarios")


if __name__ == "__main__":
    main(sys.argv[1:])
