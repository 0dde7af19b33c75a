"""Named sets of experiment runs that notebooks run as one: the seed suite, the target-fault
table, a throttled mirror.  Each call records its runs like any experiment; the rows built
here are what the summary notebooks display and compare (see :mod:`kvmlab.lab.compare`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import analysis, paths
from kvmlab import experiments as ex
from kvmlab.errors import BadInput, KvmlabError
from kvmlab.experiments import ExperimentResult, scenarios
from kvmlab.experiments.consistency import SEED_CACHES
from kvmlab.guest import fio
from kvmlab.lab.notebook import run_experiment
from kvmlab.model import check_granularity, check_speed
from kvmlab.store.runs import load_run

#: the seed's experiments as the suite runs them: name -> (experiment, variant)
SEED_SUITE: dict[str, tuple[Callable[..., ExperimentResult], dict[str, Any]]] = {
    "E1": (ex.mirror_basic, {"after_ready_s": 1.0}),
    "E2 stop": (ex.mirror_nfs_outage, {"outage": "stop", "outage_after_s": 0.5,
                                       "outage_s": 3.0}),
    "E2 freeze": (ex.mirror_nfs_outage, {"outage": "freeze", "outage_after_s": 0.5,
                                         "outage_s": 3.0}),
    "E3": (ex.commit_stopped, {"method": "hmp"}),
    "E4 paused": (ex.pivot, {"paused": True}),
    "E4 running": (ex.pivot, {"paused": False}),
    "E5": (ex.double_pivot, {}),
    # the seed moved the old image to another file system: tmpfs here (the RAM dir)
    "E6": (ex.remove_source, {"action": "move", **({"move_to": str(paths.ram_dir())}
                                                   if paths.ram_dir().is_dir() else {})}),
    "E7": (ex.shallow_existing, {}),
    # the consistency study for conclusions 2 and 3, one run per cache mode (so they run
    # side by side), each cutting `trials` copies with each cut (10 in kvmlab seed), interleaved
    **{f"C2/3 {cache}": (ex.consistency_study, {"cache_modes": [cache]})
       for cache in SEED_CACHES},
    # kvmlab's own: the other snapshot methods beside the mirror, one run per method
    **{f"S {method}": (ex.snapshot_methods, {"methods": [method]}) for method in ex.METHODS},
}
#: the target-fault table: fault:policy pairs
FAULT_CASES = ("nbd_suspend:report nbd_down:report eio:report eio:ignore eio:stop "
               "enospc:enospc enospc:report throttle:report")


def chosen_names(chosen: str | Iterable[str] | None, known: Iterable[str], what: str) -> list[str]:
    """The names in *chosen* (comma-separated or a list; None: all *known*), each checked
    against *known* (else one line naming the *what*)."""
    known = list(known)
    if chosen is None:
        return known
    names = chosen.split(",") if isinstance(chosen, str) else list(chosen)
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise BadInput(f"unknown {what} {', '.join(bad)}; known: {', '.join(known)}")
    return names


def seed_suite(namespace: Mapping[str, Any], only: str | Iterable[str] | None = None,
               **overrides: Any) -> dict[str, ExperimentResult]:
    """Run the seed suite (or the experiments named in *only*) with *namespace*'s sizes and
    options, each run in a sub-folder of the notebook's run; *overrides* win (``qemu=``)."""
    names = chosen_names(only, SEED_SUITE, "seed experiment")
    out: dict[str, ExperimentResult] = {}
    for name in names:
        fn, variant = SEED_SUITE[name]
        extra = dict(variant)
        if fn is ex.shallow_existing and "fill_mib" in namespace:
            extra["base_fill_mib"] = int(namespace["fill_mib"]) * 2
        if fn is ex.snapshot_methods:       # its copies per quiesce, apart from C2/3's
            extra["trials"] = int(namespace.get("method_trials", 2))
        out[name] = run_experiment(fn, namespace, many=True, **{**extra, **overrides})
    return out


def seed_conclusion(name: str) -> str:
    return ex.SEED_CONCLUSIONS[name.split()[0]]


def seed_rows(results: Mapping[str, ExperimentResult]) -> pd.DataFrame:
    """One row per seed run: verdict, time to ready, bytes copied, the seed's conclusion."""
    rows = []
    for name, r in results.items():
        s = analysis.summarize(r.data)
        rows.append({"experiment": name, "seed_conclusion": seed_conclusion(name),
                     "verdict": "PASS" if r.passed else "FAIL", "agrees": r.passed,
                     "time_to_ready_s": s.get("time_to_ready_s"),
                     "bytes_copied": s.get("bytes_copied"), "run": r.run_path.name})
    return pd.DataFrame(rows)


def fault_table(namespace: Mapping[str, Any], cases: str = FAULT_CASES,
                **overrides: Any) -> dict[str, ExperimentResult]:
    """Run each ``fault:policy`` case of *cases* (space-separated); all are checked first,
    so a bad one runs nothing."""
    parsed = {}
    for case in cases.split():
        fault, _, policy = case.partition(":")
        if fault not in ex.FAULTS:
            raise BadInput(f"unknown fault {fault!r} in {case!r}; known: {', '.join(ex.FAULTS)}")
        parsed[case] = (fault, policy or "report")
    return {case: run_experiment(ex.target_fault, namespace, many=True, fault=fault,
                                 on_target_error=policy, **overrides)
            for case, (fault, policy) in parsed.items()}


FAULT_COLUMNS = ["fault", "on_target_error", "behaviour", "error_events", "error_actions",
                 "paused_io_status", "recovery_steps", "fault_window_s", "fault_stall_s",
                 "fault_first_progress_after_s", "time_to_ready_s", "job_end", "verify_pass",
                 "checked", "pass"]


def fault_rows(results: Mapping[str, ExperimentResult]) -> pd.DataFrame:
    return pd.DataFrame([{c: r.verdict.get(c) for c in FAULT_COLUMNS} for r in results.values()])


def scenario_runs(namespace: Mapping[str, Any], names: str | Iterable[str] | None = None,
                  **overrides: Any) -> dict[str, ExperimentResult]:
    """Run the catalogue's scenarios named in *names* (comma-separated; None: all), each a
    sub-run of the notebook's run; all names are checked first, so a bad one runs nothing."""
    chosen = chosen_names(names, ex.SCENARIOS, "scenario")
    return {name: run_experiment(ex.scenario, namespace, many=True, name=name, **overrides)
            for name in chosen}


def scenario_rows(results: Mapping[str, ExperimentResult]) -> pd.DataFrame:
    """The catalogue's table: a row per scenario run (:func:`kvmlab.experiments.scenarios.row`)."""
    return pd.DataFrame([scenarios.row(r.verdict) for r in results.values()],
                        columns=scenarios.COLUMNS)


def results_in(folder: str | Path, experiment: str) -> list[ExperimentResult]:
    """Every finished run of *experiment* recorded under *folder* (a sweep's folder, or a
    notebook run's) that has a verdict, in folder order; unreadable runs are left out."""
    found = []
    for meta_file in sorted(Path(folder).rglob("run.json")):
        try:
            data = load_run(meta_file.parent)
        except KvmlabError:
            continue
        if data.meta.get("experiment") == experiment and data.meta.get("verdict"):
            found.append(ExperimentResult(meta_file.parent, data.meta["verdict"], data))
    return found


def scenario_results_in(folder: str | Path) -> dict[str, list[dict[str, ExperimentResult]]]:
    """Every scenario run recorded under *folder* (a sweep's folder, or a notebook run's),
    by QEMU build, as a list of repetitions (``{scenario: result}`` each): the table of a
    sweep whose points ran the scenarios side by side."""
    found: dict[str, list[dict[str, ExperimentResult]]] = {}
    for result in results_in(folder, "scenario"):
        name = result.verdict["scenario"]
        build = str((result.data.meta.get("params") or {}).get("qemu", "system"))
        reps = found.setdefault(build, [])
        slot = next((r for r in reps if name not in r), None)
        if slot is None:
            slot = {}
            reps.append(slot)
        slot[name] = result
    return found


def throttled(namespace: Mapping[str, Any], speed: int, ready_timeout: float = 30,
              **overrides: Any) -> ExperimentResult:
    """E1 under a speed limit, the guest writing at 256 KiB/s (an eighth of a 2 MiB/s limit,
    so the job converges and the rate measured is the limiter's, not a race with the
    guest): how closely the copy rate keeps to ``speed``."""
    return run_experiment(ex.mirror_basic, namespace, many=True, speed=speed, after_ready_s=0.5,
                          ready_timeout=ready_timeout,
                          **{"workload_rate_kib_s": 256, **overrides})


def rate_fidelity(result: ExperimentResult) -> dict[str, Any]:
    """Measured copy rate against ``speed``: the bytes copied by READY over the time to
    READY, or over the whole job when it never got there."""
    s = analysis.summarize(result.data)
    speed = (result.data.meta.get("params") or {}).get("speed")
    ttr, copied = s.get("time_to_ready_s"), result.verdict.get("bytes_len")
    rate = copied / ttr if copied and ttr else s.get("mean_copy_rate")
    return {"speed": speed, "copy_rate": rate, "ready": ttr is not None,
            "rate_over_speed": rate / speed if rate and speed else None}


#: the workload table's columns (:func:`kvmlab.experiments.workload_cost`'s verdict)
WORKLOAD_COLUMNS = ["profile", "granularity", "speed", "outcome", "predictor_diverging_s",
                    "guest_written_mib", "recopied_mib", "write_amplification",
                    "iops_before", "iops_during", "write_p50_ms_before", "write_p50_ms_during",
                    "write_p99_ms_before", "write_p99_ms_during", "pass"]


def workload_grid(namespace: Mapping[str, Any], profiles: str, granularities: str,
                  speeds: str, **overrides: Any) -> list[ExperimentResult]:
    """Run :func:`~kvmlab.experiments.workload_cost` for every profile x granularity x speed
    (space-separated lists), each a sub-run of the notebook's run; every value is checked
    first, so a bad one runs nothing."""
    names = chosen_names(profiles.replace(" ", ","), fio.PROFILES, "profile")
    try:
        grans = [int(g) for g in granularities.split()]
        limits = [int(s) for s in speeds.split()]
    except ValueError:
        raise BadInput(f"granularities={granularities!r} and speeds={speeds!r} must be "
                       "integers (bytes, bytes/s) separated by spaces") from None
    for g in grans:
        check_granularity(g)
    for s in limits:
        check_speed(s)
    return [run_experiment(ex.workload_cost, namespace, many=True, profile=p, granularity=g,
                           speed=s, **overrides)
            for p in names for g in grans for s in limits]


def workload_rows(results: Iterable[ExperimentResult] | str | Path) -> pd.DataFrame:
    """The workload table: a row per :func:`~kvmlab.experiments.workload_cost` run, from
    *results* or from every such run recorded under a folder (a sweep's)."""
    if isinstance(results, (str, Path)):
        results = results_in(results, "workload_cost")
    verdicts = [r.verdict for r in results]
    rows = pd.DataFrame([{c: v.get(c) for c in WORKLOAD_COLUMNS} for v in verdicts],
                        columns=WORKLOAD_COLUMNS)
    return rows.sort_values(["profile", "granularity", "speed"], kind="stable",
                            ignore_index=True)
