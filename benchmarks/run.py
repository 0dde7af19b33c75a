"""kvmlab benchmarks: side-by-side measurements in one run, reported as ratios.

    python benchmarks/run.py            # the full run (make bench), ~15 min on 2 cores
    python benchmarks/run.py --smoke    # tiny sizes, one repetition: checks it all executes

Writes ``RESULTS.md`` (a Markdown table per measurement) and ``results.json`` into
``--out`` (default: this folder).  These machines are noisy: every figure is the median
of repeated runs, and every claim is a ratio of two things measured in the same run.
Nothing here is a timed test; CI runs ``--smoke`` only to check that it executes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import uvloop
from qemu.qmp import Message

from kvmlab import __version__, paths
from kvmlab.backends.qmp import QMPBackend
from kvmlab.errors import ConnectionLost
from kvmlab.experiments.options import RunOptions
from kvmlab.guest.build import load_guest
from kvmlab.live.jobs import Job
from kvmlab.live.record import Recorder
from kvmlab.qemu import images
from kvmlab.store.runs import provenance
from kvmlab.store.sweepdir import read_points
from kvmlab.store.tmpdirs import owned_tmpdir
from kvmlab.units import MIB
from kvmlab.vm.libvirt_lab import LibvirtMachine
from kvmlab.vm.machine import Machine, resolve_accel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- 1. cost of one progress sample ---------------------------------------------------------
def _per_call(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(wall s, CPU s of this process's threads and of its children) per call, over n calls.

    Own CPU comes from the scheduler (ns-exact); children's from ``os.times`` (clock ticks,
    fine for a virsh process of some 20 ms)."""
    t0, c0, k0 = time.perf_counter(), _threads_cpu(), os.times()
    for _ in range(n):
        fn()
    t1, c1, k1 = time.perf_counter(), _threads_cpu(), os.times()
    children = (k1.children_user - k0.children_user) + \
        (k1.children_system - k0.children_system)
    return (t1 - t0) / n, (c1 - c0 + children) / n


def _threads_cpu(pid: int | str = "self") -> float:
    """CPU seconds of every thread of process *pid*, from the scheduler (ns-exact)."""
    total = 0
    task = Path(f"/proc/{pid}/task")
    for tid in os.listdir(task):
        try:
            total += int((task / tid / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


class _Others:
    """CPU that other processes (QEMU, libvirtd) spend on our samples: their CPU over a
    measured stretch minus their idle rate, measured over an equal stretch just before."""

    def __init__(self, pids: list[int], baseline_s: float) -> None:
        self.pids = pids
        c0 = self._cpu()
        time.sleep(baseline_s)
        self.idle_rate = (self._cpu() - c0) / baseline_s

    def _cpu(self) -> float:
        return sum(_threads_cpu(p) for p in self.pids)

    def __enter__(self) -> _Others:
        self.c0, self.t0 = self._cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy = self._cpu() - self.c0
        self.spent = max(busy - self.idle_rate * (time.perf_counter() - self.t0), 0.0)


def _recorder_cpu_share(vm: Machine, hz: float, seconds: float, tmp: Path) -> tuple[float, float]:
    """(CPU share of one core, CPU s per sample) of the recorder at *hz*, minus the idle
    process baseline measured just before."""
    c0 = _threads_cpu()
    time.sleep(seconds)
    idle = _threads_cpu() - c0
    rec = Recorder(tmp / f"rec-{hz:g}", interval=1 / hz)
    rec.attach_machine(vm)
    rec.start()
    time.sleep(1)                        # past start-up (thread, first sizes)
    n0, c0 = rec.sample_count, _threads_cpu()
    time.sleep(seconds)
    busy = max(_threads_cpu() - c0 - idle, 0.0)
    n = rec.sample_count - n0
    rec.stop()                           # parquet writing is not the watch's cost
    return busy / seconds, busy / max(n, 1)


def _sampler_alone(vm: Machine, interval: float, seconds: float) -> tuple[float, float, int]:
    """(wall s, CPU s, samples) per sample of the in-loop sampler with a callback that only
    counts: QEMU's QMP round trip and the loop's wake-ups, with nothing recorded.  With a
    tiny *interval* it runs back to back; at 0.01 it is a 100 Hz watch's floor."""
    n = [0]

    def count(*_: Any) -> None:
        n[0] += 1

    c0, t0 = _threads_cpu(), time.perf_counter()
    stop = vm.backend.start_sampler(interval, count, lambda err: None)  # type: ignore[attr-defined]
    time.sleep(seconds)
    stop()
    k = max(n[0], 1)
    return (time.perf_counter() - t0) / k, (_threads_cpu() - c0) / k, n[0]


def _qmp_per_byte(vm: Machine, n: int, rounds: int) -> tuple[float, float]:
    """(wall s per byte, wall s of the shortest command) of QEMU's QMP round trip.

    The same ``query-block-jobs`` is sent through qemu.qmp's raw path with an id of 1 and
    of 201 characters, interleaved; the slope is what each byte of a command costs.
    """
    qmp = vm.backend._qmp  # type: ignore[attr-defined]

    async def batch(idlen: int) -> float:
        msg = Message({"execute": "query-block-jobs", "id": "b" * idlen})
        t0 = time.perf_counter()
        for _ in range(n):
            await qmp._raw(msg, assign_id=False)
        return (time.perf_counter() - t0) / n

    short: list[float] = []
    long: list[float] = []
    for _ in range(rounds):
        short.append(vm.backend._aio.run(batch(1), timeout=60))  # type: ignore[attr-defined]
        long.append(vm.backend._aio.run(batch(201), timeout=60))  # type: ignore[attr-defined]
    per_byte = (median(long) - median(short)) / 200
    return per_byte, median(short) - per_byte * len(b'{"execute":"query-block-jobs","id":"b"}')


def _wake_floor(hz: float, n: int) -> float:
    """CPU s of one empty timer tick at *hz* on the loop kind the watch runs on (uvloop):
    what any paced watch pays per wake-up here, before doing anything."""
    async def tick() -> None:
        for _ in range(n):
            await asyncio.sleep(1 / hz)
    loop = uvloop.new_event_loop()
    try:
        c0 = _threads_cpu()
        loop.run_until_complete(tick())
        return (_threads_cpu() - c0) / n
    finally:
        loop.close()


def _libvirt_pids(domain: str) -> list[int]:
    """libvirtd's pid and the pid of *domain*'s QEMU (from libvirt's pid file)."""
    pids = [int(p) for p in subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True,
                                           text=True, check=True).stdout.split()]
    pids.append(int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text()))
    return pids


def bench_sample_cost(tmp: Path, smoke: bool) -> dict[str, Any]:
    """Per-sample wall and CPU of kvmlab's watch, the libvirt backend and the seed's virsh
    subprocess, measured in interleaved rounds against two live guests (one lab VM, one
    libvirt domain), so that the host's drifting noise hits both sides of every ratio."""
    rounds = 1 if smoke else 7
    n_fast, n_virsh, b2b_s = (50, 5, 0.5) if smoke else (300, 10, 1.0)
    base_s = 1.0 if smoke else 5.0
    for name in ("s1", "s2"):
        images.make_guest_disk(tmp / f"{name}.qcow2", 64, fill_mib=32)
    per: dict[str, list[float]] = {}

    def put(**kw: float) -> None:
        for k, v in kw.items():
            per.setdefault(k, []).append(v)

    out: dict[str, Any] = {"rounds": rounds}
    with Machine(tmp / "s1.qcow2") as vm, \
            LibvirtMachine(tmp / "s2.qcow2", name="kvmlab-bench") as lvm:
        vm.wait_guest("ready", timeout=120)
        lvm.wait_guest("ready", timeout=120)
        job = vm.mirror("drive0", tmp / "s1-t.qcow2", speed=256 * 1024, buf_size=256 * 1024)
        ljob = lvm.mirror("vda", tmp / "s2-t.qcow2", speed=256 * 1024, buf_size=256 * 1024)
        assert vm.pid is not None
        virsh = ["virsh", "-c", lvm.uri, "qemu-monitor-command", "--hmp", lvm.domain_name,
                 "info block-jobs"]
        qemu = _Others([vm.pid], base_s)
        server = _Others(_libvirt_pids(lvm.domain_name), base_s)
        for _ in range(rounds):
            qmp_wall, qmp_cpu = _per_call(vm.backend.block_jobs, n_fast)
            with qemu:
                watch_wall, watch_cpu, n = _sampler_alone(vm, 1e-6, b2b_s)
            lib_wall, lib_cpu = _per_call(lvm.backend.block_jobs, max(n_fast // 10, 5))
            with server:
                virsh_wall, virsh_cpu = _per_call(
                    lambda: subprocess.run(virsh, capture_output=True, check=True), n_virsh)
            watch_sys = watch_cpu + qemu.spent / max(n, 1)
            virsh_sys = virsh_cpu + server.spent / n_virsh
            put(qmp_wall_s=qmp_wall, qmp_cpu_s=qmp_cpu, watch_wall_s=watch_wall,
                watch_cpu_s=watch_cpu, watch_qemu_cpu_s=qemu.spent / max(n, 1),
                libvirt_wall_s=lib_wall, libvirt_cpu_s=lib_cpu, virsh_wall_s=virsh_wall,
                virsh_cpu_s=virsh_cpu, virsh_libvirtd_qemu_cpu_s=server.spent / n_virsh,
                watch_system_cpu_s=watch_sys, virsh_system_cpu_s=virsh_sys,
                ratio_virsh_over_watch_wall=virsh_wall / watch_wall,
                ratio_virsh_over_watch_cpu=virsh_cpu / watch_cpu,
                ratio_virsh_over_watch_system_cpu=virsh_sys / watch_sys,
                ratio_virsh_over_qmp_wall=virsh_wall / qmp_wall,
                ratio_virsh_over_qmp_cpu=virsh_cpu / qmp_cpu,
                ratio_virsh_over_libvirt_wall=virsh_wall / lib_wall,
                ratio_virsh_over_libvirt_cpu=virsh_cpu / lib_cpu)
        out.update({k: median(v) for k, v in per.items()})
        walls = per["ratio_virsh_over_watch_wall"]
        out["ratio_virsh_over_watch_wall_range"] = f"{min(walls):.1f} to {max(walls):.1f}"
        secs = 2.0 if smoke else 10.0
        out["recorder_cpu_share_10hz"], out["recorder_cpu_per_sample_10hz_s"] = \
            _recorder_cpu_share(vm, 10, secs, tmp)
        out["recorder_cpu_share_100hz"], out["recorder_cpu_per_sample_100hz_s"] = \
            _recorder_cpu_share(vm, 100, secs, tmp)
        out["floor_empty_loop_tick_100hz_cpu_s"] = _wake_floor(100, 50 if smoke else 500)
        out["floor_sampler_alone_100hz_cpu_s"] = _sampler_alone(vm, 0.01, secs / 2)[1]
        out["recorder_own_work_100hz_s"] = \
            out["recorder_cpu_per_sample_100hz_s"] - out["floor_sampler_alone_100hz_cpu_s"]
        out["qemu_qmp_wall_per_byte_s"], out["qemu_qmp_wall_intercept_s"] = \
            _qmp_per_byte(vm, 20 if smoke else 300, 1 if smoke else 5)
        for j in (job, ljob):
            j.cancel(force=True)
            j.wait_done(30)
    return out


# -- 2. recording overhead -------------------------------------------------------------------
class _CpuStandIn:
    """Stands in for the recorder with its CPU and none of its QMP: a thread that every
    *interval* s burns *cpu_s* of CPU.  Set against the real recorder, it splits the
    recording overhead into what the watch's own CPU costs the mirror and what QEMU's
    answering costs it."""

    def __init__(self, interval: float, cpu_s: float) -> None:
        self.interval, self.cpu_s = interval, cpu_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            end = time.thread_time() + self.cpu_s
            while time.thread_time() < end:
                pass

    def __enter__(self) -> _CpuStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _time_to_ready(vm: Machine, target: Path, watch: str, tmp: Path, burn_s: float) -> float:
    """Time from ``drive-mirror`` to BLOCK_JOB_READY of a full mirror of drive0 onto the
    existing raw *target*, under *watch*: ``none``, ``10hz``/``100hz`` (the recorder) or
    ``cpu_100hz`` (:class:`_CpuStandIn` burning *burn_s* per tick)."""
    with contextlib.ExitStack() as stack:
        if watch.endswith("hz"):
            hz = float(watch.split("_")[-1][:-2])
            if watch.startswith("cpu_"):
                stack.enter_context(_CpuStandIn(1 / hz, burn_s))
            else:
                rec = stack.enter_context(Recorder(tmp / f"ovh-{time.time_ns()}",
                                                   interval=1 / hz))
                rec.attach_machine(vm)
        return _mirror_to_ready(vm, target, format="raw", mode="existing")


def _mirror_to_ready(vm: Machine, target: Path, **mirror_kw: Any) -> float:
    """Seconds from ``drive-mirror`` of drive0 to its BLOCK_JOB_READY; then cancels it."""
    t0 = time.monotonic()
    job: Job = vm.mirror("drive0", target, **mirror_kw)
    ready = job.wait_ready(600)
    job.cancel()
    job.wait_done(60)
    return ready.mono - t0


def _fresh_mirror(vm: Machine, target: Path, **mirror_kw: Any) -> float:
    """:func:`_mirror_to_ready` onto a new image QEMU creates, removed afterwards."""
    try:
        return _mirror_to_ready(vm, target, **mirror_kw)
    finally:
        target.unlink(missing_ok=True)


def _paired(times: dict[str, list[float]], key: str, base: str,
            rng: random.Random) -> tuple[float, str]:
    """Median of the per-rep ratios key/base - 1, and a 95 % bootstrap interval of it."""
    ratios = [a / b - 1 for a, b in zip(times[key], times[base], strict=True)]
    boots = sorted(median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return median(ratios), f"{boots[50] * 100:+.2f} % to {boots[1949] * 100:+.2f} %"


def bench_recording_overhead(tmp: Path, smoke: bool) -> dict[str, Any]:
    """Time to ready with no recorder, the recorder at 10 Hz and at 100 Hz, a stand-in
    burning the recorder's CPU at 100 Hz without asking QEMU anything, and no recorder
    again (an A/A pair: how far two identical configurations differ, the noise any overhead
    figure must be read against).  Interleaved with the order rotated every rep, compared
    per rep (so drift cancels), with a bootstrap interval.

    Source and target live in RAM (tmpfs, cache=writeback), the target a preallocated raw
    image mirrored onto in place (HMP ``-n``): the host disk's run-to-run spread (about
    25 % here) and tmpfs page allocation would swamp a 2 % effect.  A RAM-to-RAM mirror
    is the fastest there is and keeps QEMU on 1.6 of the 2 cores, so contention from the
    watch shows most here: the worst case."""
    reps = 1 if smoke else 25
    fill = 16 if smoke else 1024
    ram = owned_tmpdir("kvmlab-bench-", paths.ram_dir())     # reaped if we are killed
    configs = ["none", "10hz", "100hz", "cpu_100hz", "none_again"]
    times: dict[str, list[float]] = {key: [] for key in configs}
    try:
        src, target = ram / "o.qcow2", ram / "o-t.raw"
        images.make_guest_disk(src, fill * 2, fill_mib=fill)
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", "-o", "preallocation=full",
                        str(target), f"{fill * 2}M"], check=True)
        with Machine(src, cache="writeback") as vm:
            vm.wait_guest("ready", timeout=120)
            burn_s = _recorder_cpu_share(vm, 100, 1.0 if smoke else 3.0, tmp)[1]
            for i in range(reps):
                k = i % len(configs)
                for key in configs[k:] + configs[:k]:
                    times[key].append(_time_to_ready(vm, target, key, tmp, burn_s))
    finally:
        shutil.rmtree(ram, ignore_errors=True)
    rng = random.Random(0)
    out: dict[str, Any] = {f"ttr_{k}_s": median(v) for k, v in times.items()}
    for key, name in (("10hz", "overhead_10hz"), ("100hz", "overhead_100hz"),
                      ("cpu_100hz", "overhead_cpu_standin_100hz"),
                      ("none_again", "noise_none_again_vs_none")):
        out[name], out[f"{name}_ci95"] = _paired(times, key, "none", rng)
    out["standin_cpu_per_tick_s"] = burn_s
    out["reps"] = reps
    out["image_fill_mib"] = fill
    out["storage"] = "tmpfs, cache=writeback, onto a preallocated raw target (-n)"
    return out


# -- 3. mirror throughput versus the copy limit --------------------------------------------
BUFFER_GRID = [(buf, gran) for buf in (1 * MIB, 8 * MIB, 32 * MIB) for gran in (64 * 1024, MIB)]


def bench_throughput(tmp: Path, smoke: bool) -> dict[str, Any]:
    reps = 1 if smoke else 3
    fill = 16 if smoke else 1024
    src = tmp / "big.qcow2"
    images.make_guest_disk(src, fill + fill // 2 + 16, fill_mib=fill)
    convert = []
    for _ in range(reps):
        dst = tmp / "convert.qcow2"
        t0 = time.monotonic()
        subprocess.run(["qemu-img", "convert", "-t", "none", "-T", "none", "-O", "qcow2",
                        str(src), str(dst)], check=True)
        convert.append(time.monotonic() - t0)
        dst.unlink()
    out: dict[str, Any] = {"image_fill_mib": fill, "reps": reps,
                           "qemu_img_convert_s": median(convert)}
    with Machine(src) as vm:
        vm.wait_guest("ready", timeout=120)
        search = {}
        # the buffers sweep's grid, one run each, to pick from (smoke: its first two)
        for buf, gran in BUFFER_GRID[:2] if smoke else BUFFER_GRID:
            search[(buf, gran)] = _fresh_mirror(vm, tmp / "t.qcow2", buf_size=buf,
                                                granularity=gran)
        best = min(search, key=lambda k: search[k])
        default, tuned = [], []
        for _ in range(reps):
            default.append(_fresh_mirror(vm, tmp / "t.qcow2"))
            tuned.append(_fresh_mirror(vm, tmp / "t.qcow2", buf_size=best[0],
                                       granularity=best[1]))
    out["buffer_search_s"] = {f"buf={b // MIB}MiB,gran={g // 1024}KiB": round(v, 3)
                              for (b, g), v in search.items()}
    out["recommended_buf_size"], out["recommended_granularity"] = best
    out["mirror_default_s"] = median(default)
    out["mirror_recommended_s"] = median(tuned)
    out["ratio_default_over_convert"] = out["mirror_default_s"] / out["qemu_img_convert_s"]
    out["ratio_recommended_over_convert"] = out["mirror_recommended_s"] / out["qemu_img_convert_s"]
    return out


# -- 4. end to end -----------------------------------------------------------------------
def bench_end_to_end(tmp: Path, smoke: bool) -> dict[str, Any]:
    from kvmlab.experiments import mirror_basic
    reps = 1 if smoke else 3
    walls, verdicts = [], []
    for _ in range(reps):
        t0 = time.monotonic()
        r = mirror_basic(image_mib=64, fill_mib=16, speed=0, after_ready_s=1.0,
                         options=RunOptions(runs_dir=tmp / "e2e"))
        walls.append(time.monotonic() - t0)
        verdicts.append(bool(r.passed))
    return {"e1_wall_s": median(walls), "reps": reps, "all_passed": all(verdicts)}


# -- 5. sweep scaling --------------------------------------------------------------------
def bench_sweep(tmp: Path, smoke: bool) -> dict[str, Any]:
    from kvmlab.batch.sweep import SweepSpec, run_sweep
    nb = ROOT / "notebooks" / "01_mirror_basic.ipynb"
    params = {"image_mib": 48, "fill_mib": 4, "workload_kib": 128, "after_ready_s": 0.3,
              "ready_timeout": 60.0, "speed": 0}
    grid: dict[str, list[Any]] = {"workload_rate_kib_s": [256, 512]} if smoke else \
        {"workload_rate_kib_s": [256, 512, 768, 1024], "sync": ["full", "top"]}
    out: dict[str, Any] = {"points": 2 if smoke else 8}
    for workers in ((2,) if smoke else (1, 2)):       # smoke: that it runs, not its scaling
        t0 = time.monotonic()
        run_sweep(SweepSpec(nb, dict(params), dict(grid)), tmp / f"sweep-{workers}",
                  workers=workers, report=False, progress=False)
        out[f"wall_{workers}_workers_s"] = time.monotonic() - t0
    if "wall_1_workers_s" in out:
        out["speedup_2_over_1"] = out["wall_1_workers_s"] / out["wall_2_workers_s"]
    return out


# -- 6. the panel's live plot: ipympl against the PNG it replaced ---------------------------
def bench_live_plot(tmp: Path, smoke: bool) -> dict[str, Any]:
    """The kernel's work per refresh of the panel's live plot, on a run recorded from real
    QEMU: the PNG image (redraw, render at 100 dpi, encode) against the interactive ipympl
    figure (redraw, then the render and image diff the browser's draw request costs).  Both
    in this process, alternated, so the ratio holds on any CPU."""
    import matplotlib
    matplotlib.use("Agg")
    from kvmlab.lab.widgets import LivePlot
    from kvmlab.plots import png as _png
    from kvmlab.store.runs import load_run
    run = load_run(ROOT / "tests" / "data" / "runs" / "stall-set-speed")
    samples, events = run.samples, run.events
    png, live = LivePlot(interactive=False), LivePlot(interactive=True)

    def png_refresh() -> None:
        png._redraw(samples, events)
        _png(png.fig)

    def png72_refresh() -> None:                  # the panel before ipympl
        png._redraw(samples, events)
        _png(png.fig, dpi=72)

    def ipympl_refresh() -> None:
        live._redraw(samples, events)
        live.canvas.draw()                        # what the browser's draw request runs
        live.canvas.get_diff_image()

    n = 3 if smoke else 20
    times: dict[str, list[float]] = {"png72": [], "png": [], "ipympl": []}
    for _ in range(n):
        for name, fn in (("png72", png72_refresh), ("png", png_refresh),
                         ("ipympl", ipympl_refresh)):
            t0 = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t0)
    live.close()
    out = {f"{k}_cpu_per_refresh_s": median(v) for k, v in times.items()}
    out["ipympl_over_png"] = out["ipympl_cpu_per_refresh_s"] / out["png_cpu_per_refresh_s"]
    out["ipympl_over_png72"] = out["ipympl_cpu_per_refresh_s"] / out["png72_cpu_per_refresh_s"]
    out["ipympl_kernel_share_at_2_hz"] = 2 * out["ipympl_cpu_per_refresh_s"]
    out["png_kernel_share_at_2_hz"] = 2 * out["png_cpu_per_refresh_s"]
    out["refreshes"] = n
    return out


# -- 7. QEMU builds side by side --------------------------------------------------------------
OTHER_BUILD = "10.0"


def bench_qemu_builds(tmp: Path, smoke: bool) -> dict[str, Any]:
    """E1 end to end and the per-sample watch cost on Debian's QEMU and on 10.0, alternated
    rep by rep in one run (the host's drift hits both): ratios 10.0 / system."""
    from kvmlab.experiments import mirror_basic
    from kvmlab.qemu import builds
    pair = ("system", OTHER_BUILD)
    reps = 1 if smoke else 3
    # the disk, E1's data on it, and the watched VMs' data (more: a job that lasts)
    disk_mib, e1_fill, fill = (32, 4, 8) if smoke else (64, 16, 32)
    walls: dict[str, list[float]] = {b: [] for b in pair}
    passed = []
    for _ in range(reps):
        for b in pair:
            t0 = time.monotonic()
            r = mirror_basic(image_mib=disk_mib, fill_mib=e1_fill, speed=0, after_ready_s=1.0,
                             options=RunOptions(runs_dir=tmp / "builds-e2e", qemu=b))
            walls[b].append(time.monotonic() - t0)
            passed.append(bool(r.passed))
    out: dict[str, Any] = {"reps": reps, "all_passed": all(passed),
                           "e1_wall_system_s": median(walls["system"]),
                           f"e1_wall_{OTHER_BUILD}_s": median(walls[OTHER_BUILD]),
                           "ratio_e1_wall": median([n / o for o, n in
                                                    zip(walls["system"], walls[OTHER_BUILD])])}
    rounds, b2b_s = (1, 0.5) if smoke else (7, 1.0)
    vms = {}
    try:
        for b in pair:
            with builds.using(b):
                images.make_guest_disk(tmp / f"w-{b}.qcow2", disk_mib, fill_mib=fill)
            vms[b] = Machine(tmp / f"w-{b}.qcow2", qemu=b, name=f"kvmlab-bench-{b}")
            vms[b].launch()
        for b, vm in vms.items():
            vm.wait_guest("ready", timeout=120)
            vm.mirror("drive0", tmp / f"w-{b}-t.qcow2", speed=256 * 1024, buf_size=256 * 1024)
        per: dict[str, list[float]] = {}
        for _ in range(rounds):
            got = {b: _sampler_alone(vm, 1e-6, b2b_s) for b, vm in vms.items()}
            for b, (wall, cpu, _n) in got.items():
                per.setdefault(f"watch_wall_{b}_s", []).append(wall)
                per.setdefault(f"watch_cpu_{b}_s", []).append(cpu)
            per.setdefault("ratio_watch_wall", []).append(got[OTHER_BUILD][0] / got["system"][0])
            per.setdefault("ratio_watch_cpu", []).append(got[OTHER_BUILD][1] / got["system"][1])
        out.update({k: median(v) for k, v in per.items()})
    finally:
        for vm in vms.values():
            vm.shutdown(hard=True)
    return out


# -- 8. QEMU's trace stream: its cost, and long runs drawn ------------------------------
#: the commit before the trace stream: its plots and analysis are "today's" dashboard
BEFORE_TRACE = "998d3a2"


def _before_trace() -> Any:
    """kvmlab's plots module as it was before the trace stream (with its analysis), loaded
    from git, so both dashboards are timed side by side in one run; None without git."""
    import importlib
    import types

    import kvmlab.marks
    import kvmlab.store.runs
    import kvmlab.units
    pkg = types.ModuleType("kvmlab_before")
    pkg.__path__ = []
    sys.modules["kvmlab_before"] = pkg
    for name, mod in (("marks", kvmlab.marks), ("units", kvmlab.units), ("runs", kvmlab.store.runs)):
        sys.modules[f"kvmlab_before.{name}"] = mod
        setattr(pkg, name, mod)
    for name in ("analysis", "plots"):
        proc = subprocess.run(["git", "show", f"{BEFORE_TRACE}:kvmlab/{name}.py"], cwd=HERE,
                              capture_output=True, check=False)
        if proc.returncode:
            return None
        mod = types.ModuleType(f"kvmlab_before.{name}")
        mod.__package__ = "kvmlab_before"
        sys.modules[mod.__name__] = mod
        exec(compile(proc.stdout, f"{BEFORE_TRACE}:kvmlab/{name}.py", "exec"), mod.__dict__)
        setattr(pkg, name, mod)
    importlib.invalidate_caches()
    return pkg.plots


def bench_trace(tmp: Path, smoke: bool) -> dict[str, Any]:
    """The trace stream's cost and the long-run dashboard.

    - time to ready with QEMU's mirror trace on vs off, RAM to RAM as the recording
      overhead is measured, on one VM whose trace is switched with ``trace-event-set-state``
      between reps (the recorder tails the file throughout), paired per rep;
    - the parser's cost per event, and the trace's size per GiB mirrored (QEMU's log, and
      the parquet the run keeps);
    - a 10-hour run at 10 Hz (a real NBD-outage run with its trace, tiled) drawn by today's
      dashboard (before the trace stream) and by the new one with lanes and causes."""
    from kvmlab import plots
    from kvmlab.qemu import trace as qtrace
    from kvmlab.store.runs import load_run, tile
    # 2 GiB of data on a 4 GiB disk: each mirror takes ~0.4 s, so a few ms of noise
    # per rep no longer spans the 3 % the target is about
    reps = 1 if smoke else 25
    fill = 16 if smoke else 2048
    ram = owned_tmpdir("kvmlab-bench-", paths.ram_dir())
    times: dict[str, list[float]] = {"off": [], "on": []}
    out: dict[str, Any] = {}
    try:
        src, target = ram / "o.qcow2", ram / "o-t.raw"
        images.make_guest_disk(src, fill * 2, fill_mib=fill)
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", "-o", "preallocation=full",
                        str(target), f"{fill * 2}M"], check=True)
        log = ram / "trace.log"
        spec = qtrace.TraceSpec(log)
        with Machine(src, cache="writeback", trace=spec) as vm:
            vm.wait_guest("ready", timeout=120)
            rec = Recorder(tmp / "trace-ovh", interval=0.1)
            rec.attach_machine(vm)
            rec.start()
            try:
                for i in range(reps):
                    for key in (("off", "on") if i % 2 else ("on", "off")):
                        qmp = vm.backend
                        assert isinstance(qmp, QMPBackend)
                        qmp.execute("trace-event-set-state",
                                    {"name": "mirror_*", "enable": key == "on"})
                        times[key].append(_mirror_to_ready(vm, target, format="raw",
                                                           mode="existing"))
                rows_on = rec.trace_rows
                log_bytes = log.stat().st_size
            finally:
                rec.stop()
            parquet_bytes = (tmp / "trace-ovh" / "trace.parquet").stat().st_size
        copied_gib = reps * fill * 2 / 1024          # each "on" rep mirrors the whole disk
        out["ttr_trace_off_s"] = median(times["off"])
        out["ttr_trace_on_s"] = median(times["on"])
        out["overhead_trace"], out["overhead_trace_ci95"] = _paired(times, "on", "off",
                                                                    random.Random(0))
        out["trace_events_per_gib"] = rows_on / copied_gib
        out["trace_log_mib_per_gib"] = log_bytes / MIB / copied_gib
        out["trace_parquet_mib_per_gib"] = parquet_bytes / MIB / copied_gib
    finally:
        shutil.rmtree(ram, ignore_errors=True)
    lines = (Path(__file__).resolve().parent.parent / "tests" / "data" /
             "trace-7.2.log").read_text().splitlines() * (50 if smoke else 2000)
    parser = qtrace.Parser("vm", lambda w: w)
    t0 = time.perf_counter()
    parser.rows(lines)
    out["parse_us_per_event"] = (time.perf_counter() - t0) / len(lines) * 1e6
    # the long run: a real outage run with its trace (the NBD target suspended, recorded
    # from QEMU 7.2 and committed with the tests), tiled to 10 hours at 10 Hz
    big = tile(load_run(ROOT / "tests" / "data" / "runs" / "trace-nbd-suspend"),
               0.5 if smoke else 10.0, hz=10.0)
    out["long_run_samples"] = len(big.samples)
    out["long_run_trace_rows"] = len(big.trace)
    before = _before_trace()
    import matplotlib.pyplot as plt
    for key, draw in (("dashboard_today_s", (lambda: before.dashboard(big)) if before else None),
                      ("dashboard_with_trace_s", lambda: plots.dashboard(big))):
        if draw is None:
            out[key] = "no git history: today's dashboard not loaded"
            continue
        t0 = time.perf_counter()
        fig = draw()
        out[key] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fig.savefig(tmp / "long.png", dpi=72)
        out[key.replace("_s", "_png_s")] = time.perf_counter() - t0
        plt.close(fig)
    if before is not None:
        out["dashboard_speedup"] = out["dashboard_today_s"] / out["dashboard_with_trace_s"]
    out["reps"] = reps
    out["image_fill_mib"] = fill
    return out


# -- 9. the convergence predictor's accuracy, and the active mode's cost on a slow target ----
def bench_convergence(tmp: Path, smoke: bool) -> dict[str, Any]:
    """The ``convergence`` sweep (``notebooks/sweeps/convergence.yaml``, 16 points on two
    builds; smoke: 2 points) scored with :func:`kvmlab.analysis.converge.score_runs`; then the same
    pressure on a slow target (NBD export taking 2 MiB/s) in background and write-blocking
    mode, side by side: what the active mode costs the guest's writes."""
    from kvmlab import experiments as ex
    from kvmlab.analysis import converge
    from kvmlab.batch.sweep import SweepSpec, run_sweep
    spec = SweepSpec.from_yaml(ROOT / "notebooks" / "sweeps" / "convergence.yaml")
    if smoke:        # one point (the mode that converges at once), one slow-target pair
        spec.grid = {}
        spec.points = [{"speed": 1048576, "workload_rate_kib_s": 3072, "qemu": "system",
                        "modes": "write-blocking"}]
        spec.params.update({"fill_mib": 4, "ready_timeout": 10.0, "stall_timeout": 8.0,
                            "baseline_s": 1.0})
    t0 = time.monotonic()
    run_sweep(spec, tmp / "convergence", workers=2, report=False, progress=False)
    out: dict[str, Any] = {"sweep_points": len(spec.plan()),
                           "sweep_wall_s": time.monotonic() - t0}
    table = converge.score_runs(tmp / "convergence")
    out.update(converge.accuracy_summary(table))
    out["runs_table"] = {f"{r.qemu} {r.copy_mode} speed {int(str(r.speed)) // 1024} KiB/s guest "
                         f"{r.workload_rate_kib_s:g} KiB/s": _scored(r)
                         for r in table.itertuples()}
    cost: dict[str, Any] = {}
    for mode in ("background", "write-blocking"):
        try:
            v = ex.convergence_pressure(copy_mode=mode, speed=1 << 20, slow_target_bps=2 << 20,
                                        image_mib=16 if smoke else 32, give_up_when=None,
                                        ready_timeout=5 if smoke else 30,
                                        baseline_s=1.0 if smoke else 3.0,
                                        options=RunOptions(runs_dir=tmp / "runs")).verdict
        except ConnectionLost as err:
            # QEMU 7.2 now and then aborts on the forced cancel of a job held by the slow
            # target: a finding to report (with QEMU's last words), not a broken benchmark
            cost[mode] = {}
            out[f"slow_target_{mode}"] = {"qemu_died": str(err)}
            continue
        cost[mode] = v["guest_write_cost"]["mirror"] or {}
        out[f"slow_target_{mode}"] = {
            "converged": v["converged"], "time_to_ready_s": v["time_to_ready_s"],
            **{k: cost[mode].get(k) for k in ("writes", "latency_median_ms",
                                              "latency_p95_ms", "written_mib_s")}}
    for key in ("latency_median_ms", "latency_p95_ms", "written_mib_s"):
        a, b = cost["write-blocking"].get(key), cost["background"].get(key)
        out[f"slow_target_{key}_ratio_active_over_background"] = a / b if a and b else None
    return out


def bench_predictor(tmp: Path, smoke: bool) -> dict[str, Any]:
    """The predictor replayed over its committed recordings (``benchmarks/predictor.py``):
    each set's figures with today's settings, and the patience setting's effect.  Recording
    the sets again is ``python benchmarks/predictor.py record <set>`` (about 10 min each)."""
    import predictor as held
    out: dict[str, Any] = {}
    # smoke: the tuning set, scored with today's settings and with the patience setting
    for name in ("tuning",) if smoke else held.SETS:
        if not any(held.folder(name).rglob("run.json")):
            out[name] = "not recorded"
            continue
        table, summary = held.score(name)
        out[name] = {k: summary[k] for k in (
            "runs", "converged", "false_alarms", "diverged", "never_flagged",
            "said_diverging_median_s", "said_diverging_latest_s", "eta_range_coverage",
            "eta_error_median_signed_rel", "eta_error_worst_signed_rel",
            # storage migrations: runs not READY in time that still converged, and the RAM
            *(("never_flagged_but_converging", "ram_migrations", "ram_completed",
               "ram_false_alarms", "ram_never_completed", "ram_never_flagged",
               "ram_said_diverging_median_s") if name == "migration" else ()))}
        if name == "evaluation" and not smoke:
            out["evaluation_runs"] = {
                f"{r.qemu} {r.workload_kib} KiB at {r.workload_rate_kib_s:g} KiB/s, limit "
                f"{int(str(r.speed)) // 1024} KiB/s": _scored(r) for r in table.itertuples()}
    for patience in ((2.0,) if smoke else (0.5, 2.0)):
        for name in ("tuning",) if smoke else ("development", "evaluation"):
            if any(held.folder(name).rglob("run.json")):
                s = held.score(name, patience=patience)[1]
                out[f"{name}_patience_{patience:g}"] = {k: s[k] for k in (
                    "false_alarms", "never_flagged", "said_diverging_median_s",
                    "said_diverging_latest_s")}
    return out


def _scored(r: Any) -> str:
    if r.converged:
        eta = "no ETA yet" if pd.isna(r.eta_error_s) \
            else f"ETA error {r.eta_error_s:+.1f} s ({r.eta_error_rel:+.0%})"
        alarm = ", FALSE ALARM" if r.false_alarm else ""
        return f"ready in {r.time_to_ready_s:.1f} s, at half-way {eta}{alarm}"
    said = "never said diverging" if pd.isna(r.said_diverging_s) \
        else f"said diverging after {r.said_diverging_s:.1f} s"
    return f"not ready, {said}"


def bench_seed(tmp: Path, smoke: bool) -> dict[str, Any]:
    """``kvmlab seed``: the whole seed suite (15 cases) on both builds with 2 workers, wall
    time against the sum of its runs' times (what one worker would take, less start-up);
    smoke: E4 paused and running on Debian's build at the small size."""
    from kvmlab.qemu import builds
    from kvmlab.report import labnote
    from kvmlab.seed import run_seed
    qemu = ["system", "10.0"] if "10.0" in builds.names() and not smoke else ["system"]
    t0 = time.monotonic()
    result = run_seed(qemu, tmp / "seed", workers=2, size="small" if smoke else "full",
                      cases="E4 paused,E4 running" if smoke else None, accel="tcg",
                      say=lambda _line: None, progress=False)
    points = read_points(result.folder)
    serial = sum(float(p.record["wall_s"]) for p in points)
    out: dict[str, Any] = {"builds": ", ".join(qemu), "runs": len(points),
                           "failed": len(result.failed), "wall_s": result.wall_s,
                           "wall_with_lab_note_s": time.monotonic() - t0,
                           "sum_of_run_walls_s": serial,
                           "speedup_over_serial": serial / result.wall_s,
                           "wall_over_8_min_target": result.wall_s / 480}
    for b in qemu:
        out[f"claims_{b}"] = labnote.tally(result.judgements, b)
    out["claims"] = {j.claim.key: j.outcome for j in result.judgements}
    return out


# -- 12. the guest's boot: what every experiment and every test pays per VM -------------------
class _WithCryptoSelfTests(Machine):
    """A lab VM whose kernel runs its crypto self-tests (kvmlab's guests skip them)."""

    def kernel_cmdline(self) -> str:
        line = super().kernel_cmdline()
        if " cryptomgr.notests" not in line:        # else both variants would be the same
            raise RuntimeError(f"the lab guest's command line no longer skips the crypto "
                               f"self-tests: {line}")
        return line.replace(" cryptomgr.notests", "")


def bench_boot(tmp: Path, smoke: bool) -> dict[str, Any]:
    """From QEMU's start to the guest's init (its ``boot`` line) and to its disk mounted
    (``ready``), under the accelerator this host uses, with and without the kernel's crypto
    self-tests, and with the tools disk (fio) attached and mounted (its ``tools`` line runs
    fio once, from the disk, before ``ready``), the three alternated boot by boot: ratios
    skipped / run and tools / skipped; and the kernel booted as the bzImage against its
    ELF image through the PVH entry (what every VM boots, when the kernel has one): skipped /
    bzimage; and what a VM pays instead when it resumes its shape's saved boot
    (:mod:`kvmlab.vm.saved`, opt-in): resumed / skipped, the CPU time of
    QEMU to ready too (the boots' own, and the resumes')."""
    reps = 1 if smoke else 9
    disk = tmp / "boot.qcow2"
    images.make_guest_disk(disk, 32, fill_mib=0)
    guest = load_guest()
    bzimage = dataclasses.replace(guest, kernel=guest.kernel.parent / "vmlinuz")
    name = "kvmlab-bench-boot"
    variants: dict[str, Callable[[], Machine]] = {
        "skipped": lambda: Machine(disk, mode="idle", name=name, saved_boot=False),
        "run": lambda: _WithCryptoSelfTests(disk, mode="idle", name=name, saved_boot=False),
        "tools": lambda: Machine(disk, mode="idle", name=name, tools=True, saved_boot=False),
        "bzimage": lambda: Machine(disk, mode="idle", name=name, guest=bzimage,
                                   saved_boot=False),
        "resumed": lambda: Machine(disk, mode="idle", name=name, saved_boot=True)}
    with Machine(disk, mode="idle", name=name, saved_boot=True) as first:   # saved once here
        first.wait_guest("ready", timeout=60)
    times: dict[str, dict[str, list[float]]] = {v: {"init": [], "ready": [], "cpu": []}
                                                for v in variants}
    for _ in range(reps):
        for variant, make in variants.items():
            vm = make()
            t0 = time.monotonic()
            try:
                vm.launch()
                init = vm.wait_guest("boot", timeout=60)
                ready = vm.wait_guest("ready", timeout=60)
                cpu = _threads_cpu(vm.pid or 0)
            finally:
                vm.shutdown(hard=True)
            if variant == "resumed" and vm.resumed_from is None:
                raise RuntimeError("the resumed variant booted: its boot was not saved")
            times[variant]["init"].append(init.mono - t0)
            times[variant]["ready"].append(ready.mono - t0)
            times[variant]["cpu"].append(cpu)
    out: dict[str, Any] = {"reps": reps, "accel": resolve_accel("auto"),
                           "pvh": guest.kernel.name != "vmlinuz"}
    for variant, t in times.items():
        out[f"to_init_{variant}_s"] = median(t["init"])
        out[f"to_ready_{variant}_s"] = median(t["ready"])
    out["qemu_cpu_to_ready_skipped_s"] = median(times["skipped"]["cpu"])
    out["qemu_cpu_to_ready_resumed_s"] = median(times["resumed"]["cpu"])
    for a, b in (("skipped", "run"), ("tools", "skipped"), ("skipped", "bzimage"),
                 ("resumed", "skipped")):
        out[f"ratio_to_ready_{a}_over_{b}"] = median(
            [x / y for x, y in zip(times[a]["ready"], times[b]["ready"], strict=True)])
    return out


# -- 14. real sizes: a 16 GiB disk with 4 GiB of data, against the disk's own limit ----------
def _fio_mib_s(job: dict[str, Any], side: str) -> float:
    return float(job[side]["io_bytes"]) / (float(job[side]["runtime"]) / 1000) / MIB


def _fio_disk_limits(folder: Path, size_mib: int) -> tuple[float, float]:
    """The disk's own limits (MiB/s) on *folder*'s file system, by fio from the host, as the
    mirror does I/O (O_DIRECT, 1 MiB blocks, 16 in flight: QEMU's mirror issues requests of
    at most 1 MiB, MAX_IO_BYTES, at most 16 at once, MAX_IN_FLIGHT): writing *size_mib* MiB
    alone, and copying (reading that file while writing another, the two at once: the
    write side's rate)."""
    common = ["--bs=1m", "--iodepth=16", "--ioengine=libaio", "--direct=1",
              f"--size={size_mib}m", "--output-format=json"]
    a, b = folder / "fio-a.dat", folder / "fio-b.dat"
    try:
        write = subprocess.run(["fio", "--name=write", f"--filename={a}", "--rw=write",
                                "--end_fsync=1", *common], capture_output=True, text=True,
                               check=True, timeout=1200)
        copy = subprocess.run(["fio", *common, "--name=read", f"--filename={a}", "--rw=read",
                               "--name=write", f"--filename={b}", "--rw=write",
                               "--end_fsync=1"], capture_output=True, text=True, check=True,
                              timeout=1200)
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)
    jobs = json.loads(copy.stdout)["jobs"]
    return (_fio_mib_s(json.loads(write.stdout)["jobs"][0], "write"),
            _fio_mib_s(next(j for j in jobs if j["jobname"] == "write"), "write"))


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _RssPeak:
    """The peak RSS of this process (MiB) while the block runs, sampled every 50 ms, and
    what it was when the block began."""

    def __init__(self) -> None:
        self.start = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mib())

    def __enter__(self) -> _RssPeak:
        self.start = self.peak = _rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_real_size(tmp: Path, smoke: bool) -> dict[str, Any]:
    """A 16 GiB raw disk holding 4 GiB of data (written on the host) mirrored onto a new
    file on the real disk (not tmpfs), ``cache=none``, to READY:

    - the disk's own limits, fio from the host on the same file system (before and after
      the mirrors): writing alone, and copying (reading one file while writing another);
      ``qemu-img convert`` of the same data with the same cache mode;
    - the mirror with QEMU's default buffer and granularity, and with the best of a small
      search (:data:`BUFFER_GRID`), reps interleaved, as throughput over the limit;
    - the default mirror with the recorder at 10 Hz, and with the recorder and QEMU's
      mirror trace, as overheads (paired per rep); the recorder's peak RSS growth over its
      run; the time to draw that run's dashboard."""
    import matplotlib.pyplot as plt  # heavy: only the benchmarks that draw load it

    from kvmlab import plots
    from kvmlab.qemu import trace as qtrace
    from kvmlab.store.runs import load_run
    disk_mib, fill = (256, 64) if smoke else (16384, 4096)
    reps = 1 if smoke else 7             # the real disk's spread between runs is wide
    out: dict[str, Any] = {"disk_mib": disk_mib, "data_mib": fill, "reps": reps,
                           "storage": f"{paths.scratch_dir()} (the real disk), cache=none"}
    src = tmp / "big.raw"
    t0 = time.monotonic()
    images.make_guest_disk(src, disk_mib, "raw", fill_mib=fill)
    out["make_source_s"] = time.monotonic() - t0
    limits = [_fio_disk_limits(tmp, fill)]
    convert = []
    for _ in range(2):                   # QEMU's own copy of the same data, as the mirror opens it
        t0 = time.monotonic()
        subprocess.run(["qemu-img", "convert", "-t", "none", "-T", "none", "-O", "raw",
                        str(src), str(tmp / "convert.raw")], check=True)
        convert.append(time.monotonic() - t0)
        (tmp / "convert.raw").unlink()
    times: dict[str, list[float]] = {k: [] for k in ("default", "best", "recorder",
                                                     "recorder_trace")}
    peaks: list[float] = []
    with Machine(src, cache="none", trace=qtrace.TraceSpec(tmp / "trace.log")) as vm:
        vm.wait_guest("ready", timeout=120)
        qmp = vm.backend
        assert isinstance(qmp, QMPBackend)

        def trace(on: bool) -> None:
            qmp.execute("trace-event-set-state", {"name": "mirror_*", "enable": on})

        trace(False)
        search = {(buf, gran): _fresh_mirror(vm, tmp / "t.raw", format="raw", buf_size=buf,
                                             granularity=gran)
                  for buf, gran in (BUFFER_GRID[:2] if smoke else BUFFER_GRID)}
        best = min(search, key=lambda k: search[k])
        order = list(times)
        for i in range(reps):
            k = i % len(order)
            for key in order[k:] + order[:k]:
                if key in ("default", "best"):
                    kw = {"buf_size": best[0], "granularity": best[1]} if key == "best" else {}
                    times[key].append(_fresh_mirror(vm, tmp / "t.raw", format="raw", **kw))
                    continue
                run = tmp / f"rec-{key}-{i}"
                trace(key == "recorder_trace")
                with _RssPeak() as rss, Recorder(run, interval=0.1) as rec:
                    rec.attach_machine(vm)
                    times[key].append(_fresh_mirror(vm, tmp / "t.raw", format="raw"))
                trace(False)
                peaks.append(rss.peak - rss.start)
                if key == "recorder_trace" and "dashboard_s" not in out:
                    t_draw = time.perf_counter()
                    plt.close(plots.dashboard(load_run(run)))
                    out["dashboard_s"] = time.perf_counter() - t_draw
    limits.append(_fio_disk_limits(tmp, fill))
    limit = median([w for w, _ in limits]) * MIB
    data = fill * MIB
    out["disk_limit_mib_s"] = [round(w, 1) for w, _ in limits]
    out["disk_copy_limit_mib_s"] = [round(c, 1) for _, c in limits]
    out["qemu_img_convert_mib_s"] = round(data / median(convert) / MIB, 1)
    out["buffer_search_mib_s"] = {f"buf={b // MIB}MiB,gran={g // 1024}KiB":
                                  round(data / v / MIB, 1) for (b, g), v in search.items()}
    out["best_buf_size"], out["best_granularity"] = best
    for key in ("default", "best"):
        out[f"mirror_{key}_mib_s"] = round(data / median(times[key]) / MIB, 1)
        out[f"ratio_{key}_over_disk_limit"] = round(data / median(times[key]) / limit, 3)
        out[f"ratio_{key}_over_copy_limit"] = round(
            data / median(times[key]) / MIB / median([c for _, c in limits]), 3)
    rng = random.Random(0)
    for key in ("recorder", "recorder_trace"):
        out[f"overhead_{key}"], out[f"overhead_{key}_ci95"] = _paired(times, key, "default", rng)
    out["recorder_rss_peak_growth_mib"] = round(max(peaks), 1)
    return out



# -- report --------------------------------------------------------------------------------
#: the recorder fed one job's samples at 100 Hz for *hours* (in far less time, its journal
#: writer kept at pace: never more than 1,000 rows waiting, as at 100 Hz in real time), in a
#: process of its own: its RSS before and at the end, with the rows left in the live window
#: only (today), and with every row also kept in a list (how the recorder held them before)
MEMORY_PROBE = """\
import json, sys, time
from pathlib import Path
from kvmlab.model import JobInfo
from kvmlab.live.record import Recorder
run, rows, mode, hz = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
keep_all, panel = mode == "all_rows_kept", None
if mode == "panel":                      # the panel's live plot, redrawn every 10 s of run
    from kvmlab.lab.widgets import LivePlot
    panel = LivePlot(interactive=False)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
rec = Recorder(run, interval=1 / hz)
rec.start()
kept = []
job = JobInfo("drive0", "mirror", 1 << 34, 0, 8 << 20, True, False, False, "running", "ok")
t0 = time.monotonic()
def feed(i):
    rec._on_jobs(t0 + i / hz, time.time(), [job], 0)
    if keep_all:
        kept.append(dict(rec._streams["samples"].recent[-1]))
    if panel is not None and i % int(10 * hz) == 0:
        live = rec.live_frames()
        panel.draw(live["samples"], live["events"], live["trace"])
warm = min(2000, rows // 10)
for i in range(warm):                   # warm up: pandas, the journal, the live window, a draw
    feed(i)
time.sleep(0.3)
start = rss()
pending = rec._streams["samples"].pending
mid = None
for i in range(warm, rows):
    feed(i)
    if i == rows // 2:
        mid = rss()
    if i % 1000 == 0:                   # fed far faster than 100 Hz: let the journal's
        while len(pending) > 1000:      # writer keep pace, as it does in a real run
            time.sleep(0.005)
time.sleep(0.3)
end = rss()
rec.stop()
print(json.dumps({"rss_start_mb": start, "rss_mid_mb": mid, "rss_end_mb": end, "rows": rows}))
"""


def bench_memory(tmp: Path, smoke: bool) -> dict[str, Any]:
    """The recorder's memory over a 1-hour run at 100 Hz (a fed recorder, as fast as it
    takes rows), against the same feed with every row kept, as the recorder held them
    before its live window; and a 1-hour run at 10 Hz with the panel's live plot redrawn
    from the recorder's live window every 10 s of the run (``panel_*``)."""
    hours = 0.02 if smoke else 1.0
    out: dict[str, Any] = {"hours": hours, "hz": 100, "rows": int(hours * 3600 * 100)}
    for name, hz in (("window", 100), ("all_rows_kept", 100), ("panel", 10)):
        rows = int(hours * 3600 * hz)
        res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp / f"mem-{name}"),
                              str(rows), name, str(hz)], capture_output=True, text=True,
                             check=True, timeout=1800)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        growth = m["rss_end_mb"] - m["rss_start_mb"]
        out[f"{name}_rss_growth_mb"] = round(growth, 1)
        out[f"{name}_rss_growth_mb_per_hour"] = round(growth / hours, 1)
        out[f"{name}_rss_end_mb"] = round(m["rss_end_mb"], 1)
        # flat: what the second half of the run added (the first fills the live window)
        out[f"{name}_rss_growth_second_half_mb"] = round(m["rss_end_mb"] - m["rss_mid_mb"], 1)
    out["growth_ratio_all_over_window"] = round(
        out["all_rows_kept_rss_growth_mb"] / max(out["window_rss_growth_mb"], 0.1), 1)
    return out


TARGETS = {
    "sample_cost": "kvmlab's watch >= 50x cheaper per sample than a virsh subprocess; "
                   "a 100 Hz watch < 5 % of one core",
    "recording_overhead": "< 2 % longer time to ready with the recorder on",
    "throughput": "default mirror ~1.8x qemu-img convert; recommended buffers <= 1.15x",
    "end_to_end": "seed E1 (boot, workload, mirror, cancel, boot the copy, verify) < 60 s",
    "sweep": ">= 1.6x speed-up of 2 workers over 1 (8 points)",
    "live_plot": "the interactive ipympl plot costs the kernel no more than the 72-dpi PNG "
                 "it replaced (ratio <= 1.1)",
    "qemu_builds": "E1 end to end and the per-sample watch cost on QEMU 10.0 against "
                   "Debian's 7.2, as ratios 10.0 / 7.2 (no target: a comparison)",
    "trace": "tracing on < 3 % longer time to ready; a 10-hour 10 Hz run's dashboard with "
             "its trace < 2 s (against today's, timed in the same run)",
    "convergence": "the convergence sweep: no false alarm (a converged run said to diverge); "
                   "ETA error at half of the time to ready and seconds to 'will not converge' "
                   "measured; the active mode's cost on a slow target as ratios",
    "seed": "kvmlab seed: the whole seed suite on two builds with 2 workers in at most "
            "8 minutes of wall time (wall_over_8_min_target <= 1; 8 since the consistency "
            "study cuts 10 copies per cell)",
    "memory": "the recorder's RSS grows < 50 MB over a 1-hour run at 100 Hz "
              "(window_rss_growth_mb_per_hour), and with the panel's live plot redrawn "
              "every 10 s of a 1-hour 10 Hz run (panel_rss_growth_mb_per_hour)",
    "boot": "the lab guest's boot (QEMU start to its disk mounted) with the kernel's crypto "
            "self-tests skipped against run, alternated: ratio < 0.9 (no target for the "
            "absolute time: it is what every VM of every test pays); with the fio tools disk "
            "mounted against without (what a fio workload adds to the boot; no target); the "
            "kernel's ELF image booted through its PVH entry against the bzImage: ratio < 1; "
            "a VM resuming its shape's saved boot against a boot: ratio < 0.5 (and QEMU's "
            "CPU time to ready, both ways)",
    "real_size": "a 16 GiB disk with 4 GiB of data mirrored on the real disk (cache=none) "
                 "at >= 0.9 of the disk's own fio write limit with the best buffer and "
                 "granularity of a small search (the default's ratio said beside it); the "
                 "recorder and trace overheads there as ratios; the recorder's peak RSS; "
                 "that run's dashboard < 2 s",
    "predictor": "the convergence predictor on its held-out evaluation set (settings chosen "
                 "on the tuning and development sets only): 0 false alarms, every run that "
                 "never reached READY flagged, READY inside the ETA range at half-way in "
                 ">= 80 % of runs; on storage migrations (both streams, recorded after the "
                 "settings were chosen): 0 false alarms",
}


def fmt(v: Any, key: str = "") -> str:
    if isinstance(v, float) and ("share" in key or "overhead" in key or "noise" in key):
        return f"{v * 100:.2f} %" if "share" in key else f"{v * 100:+.2f} %"
    if isinstance(v, float):
        if abs(v) < 0.01:
            return f"{v * 1e3:.3g} ms" if v > 0 else f"{v:.3g}"
        return f"{v:.3g}"
    return str(v)


def write_report(results: dict[str, Any], out: Path) -> None:
    m = results["machine"]
    lines = [f"# kvmlab benchmarks ({'smoke' if results['smoke'] else 'full'} run)", "",
             f"- date: {results['date']}", f"- machine: {m['cpus']} cores, {m['cpu']}, "
             f"accel {m['accel']}", f"- versions: kvmlab {m['kvmlab']} ({m['git']}), "
             f"{m['qemu']}, Python {m['python']}"]
    lines.append("")
    for name, data in results["benchmarks"].items():
        lines += [f"## {name.replace('_', ' ')}", "", f"Target: {TARGETS[name]}.", ""]
        if data.get("measured"):
            lines += [f"Measured {data['measured']}.", ""]
        lines += ["| measure | value |", "| --- | --- |"]
        for k, v in data.items():
            if k == "measured":
                continue
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in v.items())
            lines.append(f"| {k} | {fmt(v, k)} |")
        lines.append("")
    notes = HERE / "notes.md"              # hand-written: why the figures are what they are
    if notes.exists():
        lines.append(notes.read_text())
    (out / "RESULTS.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def _previous(path: Path, smoke: bool) -> dict[str, Any]:
    """The benchmark tables of an earlier run of the same kind (full or smoke), if any."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("smoke") != smoke:
        return {}
    return {k: v for k, v in old.get("benchmarks", {}).items() if k in TARGETS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--only", nargs="*", choices=list(TARGETS), default=list(TARGETS),
                    help="run only these; the others keep their figures from --out's "
                         "results.json (each table says when it was measured)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    results: dict[str, Any] = {
        "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "accel": resolve_accel("auto"),
                    "kvmlab": __version__, "git": prov["git_revision"], "qemu": prov["qemu_version"],
                    "python": platform.python_version()},
        "benchmarks": {}}
    previous = _previous(args.out / "results.json", args.smoke)
    results["benchmarks"] = {k: v for k, v in previous.items() if k not in args.only}
    fns = {"sample_cost": bench_sample_cost, "recording_overhead": bench_recording_overhead,
           "throughput": bench_throughput, "end_to_end": bench_end_to_end,
           "sweep": bench_sweep, "live_plot": bench_live_plot,
           "qemu_builds": bench_qemu_builds, "trace": bench_trace,
           "convergence": bench_convergence, "seed": bench_seed, "memory": bench_memory,
           "predictor": bench_predictor, "boot": bench_boot, "real_size": bench_real_size}
    paths.scratch_dir().mkdir(parents=True, exist_ok=True)
    tmp = owned_tmpdir("bench-", paths.scratch_dir())        # reaped if we are killed
    try:
        for name in args.only:
            t0 = time.monotonic()
            print(f"[bench] {name} ...", flush=True)
            measured = f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} at {results['machine']['git']}"
            results["benchmarks"][name] = {"measured": measured, **fns[name](tmp, args.smoke)}
            results["benchmarks"] = {k: results["benchmarks"][k] for k in TARGETS
                                     if k in results["benchmarks"]}
            print(f"[bench] {name} done in {time.monotonic() - t0:.0f} s", flush=True)
            write_report(results, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[bench] results: {args.out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
