"""``kvmlab seed``: the seed's whole suite on each QEMU build asked for, then the lab note.

Every case of :data:`kvmlab.lab.suites.SEED_SUITE` (E1, E2 in both outage modes, E3, E4
paused and running, E5, E6, E7 and the consistency study for conclusions 2 and 3, one
run per cut strategy) on every build is one point of a sweep of
``notebooks/08_seed_summary.ipynb``: each its own ``kvmlab run`` process with its own
QEMU, so points run side by side (``workers``), a failing point cannot take the others
down, Ctrl-C stops them all cleanly and a second call with the same ``out`` resumes.
Then :func:`kvmlab.report.document.make_labnote` writes "the lab note, reproduced" into the
folder: each of the seed's claims, what kvmlab measured on each build, agree or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmlab import paths
from kvmlab.batch.sweep import SweepSpec, outcome, run_sweep
from kvmlab.errors import BadInput
from kvmlab.experiments import consistency_study, mirror_nfs_outage, snapshot_methods
from kvmlab.lab.suites import SEED_SUITE, chosen_names
from kvmlab.model import ACCELS
from kvmlab.qemu import builds
from kvmlab.report import labnote
from kvmlab.report.document import check_output, make_labnote

SEED_NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "08_seed_summary.ipynb"
#: image sizes: "full" as the notebooks' defaults, "small" for a quick check (make test)
SIZES: dict[str, dict[str, int]] = {
    "full": {"image_mib": 48, "fill_mib": 8, "trials": 10, "repeats": 5, "method_trials": 2},
    # a quick check: fewer consistency copies per cell, E7 repetitions and method copies
    "small": {"image_mib": 32, "fill_mib": 4, "trials": 1, "repeats": 2, "method_trials": 1}}


def check_builds(qemu: str | Iterable[str]) -> list[str]:
    """``"system,10.0"`` -> ``["system", "10.0"]``, each a build there is (else one line)."""
    names = qemu.split(",") if isinstance(qemu, str) else list(qemu)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise BadInput(f"--qemu names no build; builds here: {', '.join(builds.names())}")
    if len(set(names)) != len(names):
        raise BadInput(f"--qemu {','.join(names)} names a build twice")
    for n in names:
        builds.check_name(n)
    return names


def plan(qemu: Sequence[str], size: str = "full", cases: str | Iterable[str] | None = None,
         accel: str = "auto") -> SweepSpec:
    """The sweep: a point per case and build, the longest cases (the consistency study)
    first so the last point to finish is a short one."""
    if size not in SIZES:
        raise BadInput(f"size {size!r} is not one of {', '.join(SIZES)}")
    if accel not in ACCELS:
        raise BadInput(f"accel={accel!r} is not one of {', '.join(ACCELS)}")
    chosen = chosen_names(cases, SEED_SUITE, "seed case")
    ordered = sorted(chosen, key=lambda c: SEED_SUITE[c][0] not in (consistency_study,
                                                                    snapshot_methods))
    points = _spread([{"experiments": case, "qemu": build} for case in ordered for build in qemu])
    return SweepSpec(SEED_NOTEBOOK, params={**SIZES[size], "accel": accel}, points=points)


def _needs_nfs(point: dict[str, Any]) -> bool:
    return SEED_SUITE[point["experiments"]][0] is mirror_nfs_outage


def _spread(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No two NFS points next to each other: the host has one NFS server at a time
    (:func:`kvmlab.faults.nfs.take_turn`), so neighbours, which run side by side, would
    wait for each other."""
    out: list[dict[str, Any]] = []
    todo = list(points)
    while todo:
        last_nfs = bool(out) and _needs_nfs(out[-1])
        pick = next((p for p in todo if not (last_nfs and _needs_nfs(p))), todo[0])
        todo.remove(pick)
        out.append(pick)
    return out


@dataclass
class SeedResult:
    """What ``kvmlab seed`` left: the folder, the lab note and each claim's judgement."""

    folder: Path
    note: Path
    pdf: Path | None
    judgements: list[labnote.Judgement]
    failed: list[tuple[str, str]]
    wall_s: float


def run_seed(qemu: str | Iterable[str] = builds.SYSTEM, out: str | Path | None = None, *,
             workers: int = 2, size: str = "full", cases: str | Iterable[str] | None = None,
             accel: str = "auto", pdf: str | Path | None = None,
             say: Callable[[str], Any] = print, progress: bool = True) -> SeedResult:
    """Run the seed suite on each build in *qemu* into *out*, then write its lab note.

    Everything is checked before the first QEMU starts (builds, size, cases, workers, the
    PDF path); a failing run is a "not measured" in the note and in :attr:`failed`.
    """
    names = check_builds(qemu)
    spec = plan(names, size, cases, accel)
    points = spec.plan()
    if workers < 1:
        raise BadInput(f"workers={workers} must be at least 1")
    folder = Path(out) if out else paths.data_dir() / "seed" / time.strftime("%Y%m%d-%H%M%S")
    # the PDF may go inside the folder this command makes
    pdf_out = check_output(Path(pdf), ".pdf", creates=folder) if pdf is not None else None
    versions = ", ".join(f"{n} (QEMU {builds.resolve(n).version})" for n in names)
    say(f"kvmlab seed: {len(points)} runs ({len(points) // len(names)} cases on {versions}), "
        f"{workers} worker{'s' if workers != 1 else ''}, {size} size -> {folder}")
    t0 = time.monotonic()
    folder = run_sweep(spec, folder, workers=workers, report=False, progress=progress)
    wall = time.monotonic() - t0
    _, failed = outcome(folder)
    say(f"ran in {wall:.0f} s; writing the lab note")
    note = folder / "labnote.html"
    judgements = make_labnote(folder, note, names, pdf=pdf_out, say=say)
    seed_claims = [j for j in judgements if not j.claim.own]
    own = [j for j in judgements if j.claim.own]
    for n in names:
        t, q = labnote.tally(seed_claims, n), labnote.tally(own, n)
        say(f"QEMU {n}: {t['agree']} of the seed's {len(seed_claims)} claims agree, "
            f"{t['disagree']} disagree, {t['not shown']} not shown, {t['not reproduced']} not "
            f"reproduced" + (f"; kvmlab's own questions: {q['agree']} of {len(own)} hold, "
                             f"{q['disagree']} do not, {q['not shown']} not shown" if own else ""))
    return SeedResult(folder, note, pdf_out, judgements, failed, wall)
