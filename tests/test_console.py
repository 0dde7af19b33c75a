"""Parsing the guest's serial lines and building the manifest they imply."""

import pytest

from kvmlab.errors import BadInput
from kvmlab.guest.console import parse_line
from kvmlab.guest.workload import Manifest, Workload

# Lines as the real guest printed them (from a recorded run's console log).
LINES = """\
[    3.1] random kernel noise
KVMLAB boot t=3.60 mode=workload
KVMLAB op=touch path=/wl/f1 size=0 sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 n=1 t=3.89
KVMLAB op=mkdir path=/wl/d1 size=0 sha256=- n=1 t=3.93
KVMLAB op=dd path=/wl/w1.bin size=1048576 sha256=5a1e2dc0bf15978552a7c2060c6b295e86cf9eaac2917f171ff72d4fd16a24fc n=1 t=5.18
KVMLAB op=mkdir path=/wl/d2 size=0 sha256=- n=2 t=5.40
KVMLAB op=rmdir path=/wl/d1 size=0 sha256=- n=2 t=5.63
KVMLAB verdict=pass checked=12 bad=0 t=9.1
""".splitlines()


def test_parse_lines() -> None:
    parsed = [parse_line(x) for x in LINES]
    assert parsed[0] is None
    assert parsed[1] == ("boot", {"t": 3.60, "mode": "workload"})
    name, op = parsed[4]  # type: ignore[misc]
    assert name == "op" and op["op"] == "dd" and op["size"] == 1048576 and op["n"] == 1
    assert op["sha256"].startswith("5a1e2d")
    assert parsed[-1] == ("verdict", {"verdict": "pass", "checked": 12, "bad": 0, "t": 9.1})


def test_manifest_replays_operations() -> None:
    ops = [p[1] for p in map(parse_line, LINES) if p and p[0] == "op"]
    m = Manifest.from_ops(ops)
    assert m.files["/wl/w1.bin"].startswith("5a1e2d")
    assert "/wl/f1" in m.files
    assert m.dirs == {"/wl/d2"} and m.gone == {"/wl/d1"}
    text = m.text()
    assert "G /wl/d1" in text and "D /wl/d2" in text and text.count("\n") == len(m)


def test_manifest_rejects_odd_paths() -> None:
    with pytest.raises(BadInput):
        Manifest().apply("touch", "relative/path", "x")
    with pytest.raises(BadInput):
        Manifest().apply("touch", "/a b", "x")


def test_workload_rate_sets_pause() -> None:
    w = Workload(dd_kib=512, rate_kib_s=1024)
    assert w.pause_ms == 500
    assert "kvmlab.dd_kib=512" in w.kernel_args()
    with pytest.raises(BadInput):
        Workload(dd_kib=-1)
    with pytest.raises(BadInput):
        Workload(rate_kib_s=0)


def test_a_workload_that_dirties_ram_ticks_four_times_a_second() -> None:
    """ram_mib_s: a quarter of the rate rewritten every 250 ms over the RAM set."""
    args = Workload(ram_mib_s=16, ram_set_mib=48).kernel_args()
    assert {"kvmlab.ram_tick_kib=4096", "kvmlab.ram_set_mib=48"} <= set(args)
    assert not any(a.startswith("kvmlab.ram") for a in Workload().kernel_args())
    for bad in ({"ram_mib_s": -1}, {"ram_mib_s": float("inf")}, {"ram_set_mib": 0},
                {"ram_set_mib": 1.5}):
        with pytest.raises(BadInput, match="ram_"):
            Workload(**bad)  # type: ignore[arg-type]


def test_in_flight_operations_are_not_judged() -> None:
    done = [{"op": "mkdir", "path": "/wl/d3", "n": 3}, {"op": "dd", "path": "/wl/w3.bin",
                                                         "sha256": "ab" * 32, "n": 3}]
    in_flight = [{"op": "rmdir", "path": "/wl/d3", "n": 4}]
    m = Manifest.from_ops(done, in_flight=in_flight)
    assert "/wl/d3" not in m.dirs and "/wl/d3" in m.unknown
    assert "U /wl/d3" in m.text() and len(m) == 1


def test_begin_line_parses() -> None:
    assert parse_line("KVMLAB begin op=rmdir path=/wl/d3 n=4 t=9.5") == (
        "begin", {"op": "rmdir", "path": "/wl/d3", "n": 4, "t": 9.5})


def test_line_cut_off_at_exit_is_not_a_record() -> None:
    """QEMU can stop mid-line; a line without its newline is kept as text, never parsed."""
    import io

    from kvmlab.guest.console import Console
    stream = io.BytesIO(b"KVMLAB op=touch path=/wl/f1 size=0 sha256=- n=1 t=1.0\n"
                        b"KVMLAB begin op=dd path=/wl/w1.bin n=1 t=1.1\n"
                        b"KVMLAB begin op=d")
    con = Console(stream)
    con.join()
    assert [r.name for r in con.records.snapshot()] == ["op", "begin"]
    assert con.lines[-1][1] == "KVMLAB begin op=d"


def _exited_vm(stream: "object") -> "tuple[object, object]":
    """A Machine whose QEMU has exited (a real process that ran and ended) and whose
    console reads *stream*: what a wait sees when the verify guest powers off."""
    import subprocess
    from pathlib import Path

    from kvmlab.guest.build import Guest
    from kvmlab.guest.console import Console
    from kvmlab.vm.machine import Machine
    proc = subprocess.Popen(["true"])
    proc.wait()
    vm = Machine(guest=Guest(Path("vmlinuz"), Path("initrd.img"), {}))   # never booted
    console = Console(stream)  # type: ignore[arg-type]
    vm._proc, vm._console = proc, console    # (a test may look inside)
    return vm, console


def test_a_verdict_written_as_qemu_exits_is_still_found() -> None:
    """The verify guest prints its verdict and powers off at once, so QEMU can be gone
    before the console's reader has the line.  A wait that sees QEMU exited first lets
    the reader reach the end of the stream: the verdict is found, not "QEMU exited"."""
    import os
    import threading

    r, w = os.pipe()
    vm, _ = _exited_vm(os.fdopen(r, "rb"))

    def guest() -> None:
        os.write(w, b"KVMLAB verdict=pass checked=3 bad=0 t=9.1\n")
        os.close(w)

    threading.Timer(1.2, guest).start()          # after the wait has seen QEMU exited
    rec = vm.wait_guest("verdict", timeout=10)   # type: ignore[attr-defined]
    assert rec.data == {"verdict": "pass", "checked": 3, "bad": 0, "t": 9.1}


def test_no_verdict_when_qemu_exits_is_one_line_at_once() -> None:
    """The other outcome: the stream ends with no verdict (at once: the reason, with the
    guest's last words), or never ends (after the drain time: the same reason)."""
    import os
    import time

    from kvmlab.errors import WaitTimeout
    from kvmlab.vm.machine import CONSOLE_DRAIN_S

    r, w = os.pipe()
    os.write(w, b"KVMLAB ready t=5.46\n")
    os.close(w)
    vm, console = _exited_vm(os.fdopen(r, "rb"))
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"verdict: QEMU exited with code 0; .*ready t=5.46"):
        vm.wait_guest("verdict", timeout=30)     # type: ignore[attr-defined]
    assert time.monotonic() - t0 < CONSOLE_DRAIN_S
    r, w = os.pipe()                             # a writer that stays: no end of stream
    vm, _ = _exited_vm(os.fdopen(r, "rb"))
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match="QEMU exited with code 0"):
        vm.wait_guest("verdict", timeout=30)     # type: ignore[attr-defined]
    assert CONSOLE_DRAIN_S <= time.monotonic() - t0 < CONSOLE_DRAIN_S + 2
    os.close(w)
