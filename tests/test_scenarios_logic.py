"""The scenario catalogue's rules, on verdicts recorded from real QEMU (7.2 and 10.0).

``tests/data/scenarios/<build>.json`` holds what each scenario observed in one run per build
(``kvmlab sweep -f notebooks/sweeps/scenarios.yaml``, then ``tools/scenario_record.py``).  Each rule is shown passing on its own
scenario's record, and failing on a real record where the thing it checks did not happen
(another scenario's run): evidence for both outcomes from QEMU, not invented values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvmlab.errors import BadInput
from kvmlab.experiments import scenario
from kvmlab.experiments.common import synced_manifest
from kvmlab.experiments.scenarios import RULES, SCENARIO_LIST, SCENARIOS, judge, row
from kvmlab.guest.workload import Workload
from kvmlab.vm.machine import Drive, Machine

DATA = Path(__file__).parent / "data" / "scenarios"
RECORDED = {b: json.loads((DATA / f"{b}.json").read_text()) for b in ("7.2", "10.0")}


def observed(build: str, name: str) -> dict[str, Any]:
    v = dict(RECORDED[build][name])
    for k in ("pass", "why", "scenario", "kind", "anchor", "expected"):
        v.pop(k, None)
    return v


@pytest.mark.parametrize("build", sorted(RECORDED))
def test_every_scenario_was_recorded_and_its_rule_reproduces_the_verdict(build: str) -> None:
    assert set(RECORDED[build]) == set(SCENARIOS)
    for name in SCENARIOS:
        got = judge(name, observed(build, name))
        assert got["pass"] == RECORDED[build][name]["pass"], (name, got)
        assert got["why"] == RECORDED[build][name]["why"]


#: for each rule, a real record on which it must fail (what it checks did not happen there)
COUNTER = {
    "copy": "cancel_running",                 # cancelled before READY: no copy
    "refused": "target_raw",                  # nothing was refused
    "job_survives": "target_raw",             # no reset
    "poweroff": "reset_after_ready",          # the guest never powered off
    "cancelled_partial": "force_cancel_ready",  # READY before the cancel
    "cancelled_ready": "cancel_running",      # never READY
    "sync_none": "target_raw",                # the whole disk's data was copied
    "sync_top": "target_qcow2",               # the whole disk's data was copied
    "same_point": "target_raw",               # one disk only
    "filter_node": "target_raw",              # no filter node named
    "readonly": "target_raw",                 # no pivot
    "sparse": "existing_no_unmap",            # the target stayed allocated
    "allocation": "cancel_running",           # no copy to measure
    "zeroes_written": "target_raw",           # a new target: zero areas never written
    "source_enospc": "target_raw",            # no I/O error
    "unplug": "unplug_drive_disk",            # the unplug ended the job
    "unplug_cancels": "unplug_data_disk",     # the job went on
    "stress": "cancel_running",               # neither READY nor a verdict
}


@pytest.mark.parametrize("build", sorted(RECORDED))
@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_passes_its_own_case_and_fails_a_real_counter_case(rule: str,
                                                                      build: str) -> None:
    mine = [sc for sc in SCENARIO_LIST if sc.rule == rule]
    assert mine, f"rule {rule} judges no scenario"
    passed = [sc.name for sc in mine if RULES[rule](observed(build, sc.name), sc)[0]]
    assert passed, f"{rule}: no recorded case passes on {build}"
    ok, why = RULES[rule](observed(build, COUNTER[rule]), mine[0])
    assert not ok and why, (rule, why)


def test_refusal_rule_checks_qemus_words_the_job_and_the_guest() -> None:
    sc = SCENARIOS["refuse_resize"]
    base = observed("7.2", "refuse_resize")
    assert RULES["refused"](base, sc)[0]
    assert "anchor's words" in RULES["refused"]({**base, "qemu_error": "Device busy"}, sc)[1]
    assert "ended the job" in RULES["refused"]({**base, "job_running_after": False}, sc)[1]
    assert "stopped working" in RULES["refused"]({**base, "guest_ops_after_action": 0}, sc)[1]
    # tried before any job ran (same_target): the job cannot have been harmed by it
    assert RULES["refused"](observed("7.2", "refuse_same_target"),
                            SCENARIOS["refuse_same_target"])[0]


@pytest.mark.parametrize("build", sorted(RECORDED))
def test_a_reboot_counts_only_when_the_guest_ran_its_own_shutdown_and_came_back(
        build: str) -> None:
    """The guest's reboot (its own ``shutdown -r`` through the agent) against the host's
    reset: one rule, which names what happened and fails if the guest never ran its
    shutdown or never booted again."""
    sc = SCENARIOS["guest_reboot_after_ready"]
    real = observed(build, "guest_reboot_after_ready")
    ok, why = RULES["job_survives"](real, sc)
    assert ok and why.startswith("reboot at ready") and real["guest_shutdown_said"]
    assert RULES["job_survives"](observed(build, "reset_after_ready"),
                                 SCENARIOS["reset_after_ready"])[1].startswith("reset at ready")
    ok, why = RULES["job_survives"]({**real, "guest_shutdown_said": False}, sc)
    assert not ok and "never ran its shutdown" in why
    ok, why = RULES["job_survives"]({**real, "rebooted": False}, sc)
    assert not ok and "did not boot again after the reboot" in why


def test_stress_takes_will_not_converge_only_from_a_guest_over_the_limit() -> None:
    """A "will not converge" is the stress scenario's right answer only if the guest wrote
    faster than the job's limit; under it, the verdict was a false alarm."""
    sc = SCENARIOS["stress"]
    real = observed("7.2", "stress")
    assert RULES["stress"](real, sc)[0] and real["guest_wrote_mib_s"] > 2
    ok, why = RULES["stress"]({**real, "guest_wrote_mib_s": 1.2}, sc)
    assert not ok and "false alarm" in why


def test_a_scenario_that_did_not_run_says_why_and_passes_nothing() -> None:
    got = judge("iothread", {"ran": False, "why_not": "no iothreads in this build"})
    assert got == {"pass": False, "why": "not run here: no iothreads in this build"}


def test_table_rows_join_events_and_keep_the_columns() -> None:
    r = row(RECORDED["7.2"]["source_enospc_stop"])
    assert r["events"].split() == RECORDED["7.2"]["source_enospc_stop"]["events"]
    assert r["scenario"] == "source_enospc_stop" and r["kind"] == "policy"


def test_every_scenario_names_its_anchor_and_kind() -> None:
    from kvmlab.experiments.scenarios import KINDS
    for sc in SCENARIO_LIST:
        assert sc.kind in KINDS and sc.rule in RULES
        assert sc.anchor.startswith(("tp-qemu ", "iotest ", "QAPI ")), sc.anchor
    assert {sc.kind for sc in SCENARIO_LIST} == set(KINDS)


def test_bad_input_is_one_line_before_anything_is_created(tmp_path: Path) -> None:
    from kvmlab.experiments.options import RunOptions
    with pytest.raises(BadInput, match="unknown scenario 'nope'"):
        scenario(name="nope", options=RunOptions(runs_dir=tmp_path))
    assert not list(tmp_path.iterdir())
    with pytest.raises(BadInput, match="needs rounds or duration_s"):
        Workload(poweroff=True)
    with pytest.raises(BadInput, match="at most 8"):
        Machine(extra_drives=[Drive(tmp_path, f"d{i}") for i in range(9)])
    with pytest.raises(BadInput, match="discard='trim'"):
        Drive(tmp_path, discard="trim")
    # discard=unmap reaches QEMU on either kind of drive; the default adds nothing
    assert "discard=unmap" in Drive(tmp_path, format="raw", discard="unmap").qemu_args(0)[1]
    assert '"discard": "unmap"' in Drive(tmp_path, format="raw", blockdev=True,
                                         discard="unmap").qemu_args(0)[1]
    assert "discard" not in " ".join(Drive(tmp_path, format="raw").qemu_args(0))


def test_data_disks_reach_the_guest_and_an_iothread_its_device(tmp_path: Path) -> None:
    disk = tmp_path / "a.img"
    disk.write_bytes(b"")
    d = Drive(disk, "data1", "raw", data=True, iothread=True)
    args = d.qemu_args(1)
    assert args[:2] == ["-object", "iothread,id=io-data1"]
    assert args[-1] == "virtio-blk-pci,drive=data1,id=vd1,iothread=io-data1"
    from kvmlab.guest.build import Guest
    g = Guest(kernel=tmp_path / "k", initrd=tmp_path / "i", info={"kernel_version": "x"})
    m = Machine(Drive(disk, "drive0", "raw"), mode="workload", guest=g, qemu="system",
                extra_drives=[d, Drive(disk, "ro", "raw")])
    assert "kvmlab.data=vdb" in m.kernel_cmdline().split()


class _Records:
    def __init__(self, recs: list[Any]) -> None:
        self.recs = recs

    def snapshot(self) -> list[Any]:
        return self.recs


class _VM:
    def __init__(self, recs: list[Any]) -> None:
        self.console = type("C", (), {"records": _Records(recs)})()


def test_a_cut_is_bounded_from_both_sides_per_disk() -> None:
    """Ops confirmed before the cut are expected; paths first touched after the VM went
    on again are expected absent; each disk's ops stay on that disk."""
    from kvmlab.events import Record

    def rec(name: str, mono: float, **data: Any) -> Record:
        return Record(name, {"n": 1, "t": mono, **data}, mono)

    recs = [rec("begin", 1.0, op="dd", path="/wl/w1.bin"),
            rec("op", 1.1, op="dd", path="/wl/w1.bin", sha256="a" * 64),
            rec("begin", 1.2, op="dd", path="/wl/w1.bin", disk="vdb"),
            rec("op", 1.3, op="dd", path="/wl/w1.bin", sha256="b" * 64, disk="vdb"),
            rec("begin", 1.9, op="touch", path="/wl/f2"),                    # in flight
            rec("begin", 3.0, op="dd", path="/wl/w3.bin", disk="vdb"),       # after
            rec("begin", 3.1, op="rmdir", path="/wl/w1.bin", disk="vdb")]    # seen before
    m, in_flight = synced_manifest(_VM(recs), until=2.0, disk="vdb", absent_from=2.5)
    assert m.files == {"/wl/w1.bin": "b" * 64} and not in_flight
    assert m.gone == {"/wl/w3.bin"}
    m, in_flight = synced_manifest(_VM(recs), until=2.0, absent_from=2.5)
    assert m.files == {"/wl/w1.bin": "a" * 64} and m.unknown == {"/wl/f2"}
    assert not m.gone


def test_after_a_short_stopped_cut_only_lines_past_the_lag_are_surely_after_it() -> None:
    """The VM stopped 18 ms for the cut (a full suite run): a ``begin`` arriving within
    CONSOLE_LAG_S of the stop may have been written before it, so it is in flight, not
    expected gone; one arriving later is expected gone, and the wait for writes after the
    cut waits for those (that run had none past the lag: no absence checked, no verdict)."""
    from kvmlab.events import Record
    from kvmlab.experiments.common import CONSOLE_LAG_S, surely_after_cut

    def rec(name: str, mono: float, **data: Any) -> Record:
        return Record(name, {"n": 1, "t": mono, "disk": "vdb", **data}, mono)

    until, resumed = 2.0, 2.018
    after = surely_after_cut(until, resumed)
    assert after == until + CONSOLE_LAG_S and surely_after_cut(until, 3.0) == 3.0
    recs = [rec("begin", 2.1, op="dd", path="/wl/w2.bin"),                 # either side
            rec("begin", after + 0.01, op="dd", path="/wl/w3.bin")]        # surely after
    m, in_flight = synced_manifest(_VM(recs), until=until, disk="vdb", absent_from=resumed)
    assert m.unknown == {"/wl/w2.bin"} and m.gone == {"/wl/w3.bin"}


def test_the_sweep_file_runs_every_scenario_on_both_builds() -> None:
    import yaml
    spec = yaml.safe_load((Path(__file__).parent.parent / "notebooks" / "sweeps" /
                           "scenarios.yaml").read_text())
    assert spec["grid"]["scenarios"] == list(SCENARIOS)
    assert spec["grid"]["builds"] == ["system", "10.0"]


def test_a_cancel_lands_a_moment_after_it_is_sent() -> None:
    """An operation the guest began between the cancel and the job's end may be in the copy
    or not: expected neither way (in flight), while one begun after the end is ignored."""
    from kvmlab.events import Record

    def rec(name: str, mono: float, **data: Any) -> Record:
        return Record(name, {"n": 1, "t": mono, **data}, mono)

    recs = [rec("begin", 1.0, op="mkdir", path="/wl/d1"),
            rec("op", 1.1, op="mkdir", path="/wl/d1", sha256="-"),
            rec("begin", 2.2, op="rmdir", path="/wl/d1"),          # during the cancel
            rec("op", 2.3, op="rmdir", path="/wl/d1", sha256="-"),
            rec("begin", 3.0, op="touch", path="/wl/f9")]           # after the job's end
    m, in_flight = synced_manifest(_VM(recs), until=1.5)     # rmdir's line 0.7 s after
    assert m.dirs == {"/wl/d1"} and not in_flight
    m, in_flight = synced_manifest(_VM(recs), until=2.0, settled=2.5)
    assert not m.dirs and m.unknown == {"/wl/d1"} and len(in_flight) == 1


def test_a_line_the_guest_wrote_before_the_cut_may_arrive_after_it() -> None:
    """A full suite run (refuse_resize, i.e. a mirror cancelled at READY): the guest began
    ``rmdir /wl/d6`` before the cancel landed, but its lines reached the host 14 ms after
    the job's end, with the end of the dd before it (20-50 ms behind the guest's clock).
    The copy had no d6; the judge, expecting d6, failed a correct copy.  A ``begin``
    arriving within :data:`CONSOLE_LAG_S` of the cut is in flight; later ones are not."""
    from kvmlab.events import Record
    from kvmlab.experiments.common import CONSOLE_LAG_S

    def rec(name: str, mono: float, n: int, guest_t: float, **data: Any) -> Record:
        return Record(name, {"n": n, "t": guest_t, **data}, mono)

    # host arrival (s), as recorded in that run; the cancel at 7.161627, its end 7.186177
    recs = [rec("begin", 6.253339, 6, 7.93, op="mkdir", path="/wl/d6"),
            rec("op", 6.272683, 6, 7.94, op="mkdir", path="/wl/d6", sha256="-"),
            rec("begin", 7.019268, 7, 8.68, op="dd", path="/wl/w7.bin"),
            rec("op", 7.199553, 7, 8.82, op="dd", path="/wl/w7.bin", sha256="7e" * 32),
            rec("begin", 7.199723, 7, 8.82, op="rmdir", path="/wl/d6"),
            rec("op", 7.199852, 7, 8.85, op="rmdir", path="/wl/d6", sha256="-")]
    m, _ = synced_manifest(_VM(recs), until=7.161627, settled=7.186177)
    assert m.unknown == {"/wl/w7.bin", "/wl/d6"} and not m.dirs
    # a begin arriving later than the lag after the job's end is after the cut
    late = [*recs[:4], *(Record(r.name, r.data, r.mono + CONSOLE_LAG_S) for r in recs[4:])]
    m, _ = synced_manifest(_VM(late), until=7.161627, settled=7.186177)
    assert m.dirs == {"/wl/d6"} and m.unknown == {"/wl/w7.bin"}


def test_a_write_repeated_after_a_reboot_is_in_flight_until_its_own_op_line() -> None:
    """After a reboot the guest's workload counts from 1 again: its dd of w1.bin cut short
    is in flight, although the same (op, path, n) was confirmed before the reboot (the
    copy holds new, old or torn data there); once confirmed, the new data is expected."""
    from kvmlab.events import Record

    def rec(name: str, mono: float, **data: Any) -> Record:
        return Record(name, {"n": 1, "t": mono, **data}, mono)

    recs = [rec("begin", 1.0, op="dd", path="/wl/w1.bin"),
            rec("op", 1.1, op="dd", path="/wl/w1.bin", sha256="a" * 64),
            Record("boot", {"t": 2.0}, 2.0),                             # the reboot
            rec("begin", 3.0, op="dd", path="/wl/w1.bin"),
            rec("op", 4.0, op="dd", path="/wl/w1.bin", sha256="c" * 64)]
    m, in_flight = synced_manifest(_VM(recs), until=3.5)
    assert m.unknown == {"/wl/w1.bin"} and not m.files and len(in_flight) == 1
    m, in_flight = synced_manifest(_VM(recs), until=4.5)
    assert m.files == {"/wl/w1.bin": "c" * 64} and not in_flight and not m.unknown
