"""tools/integration.sh, the integration tier's runner, with a stand-in for Python that
says what it was asked and where it runs (pure: no test runs)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "integration.sh"


def _fake_python(tmp_path: Path, exits: dict[str, int]) -> Path:
    """A 'python' that prints its arguments, its cpu cgroup and its nice value, and exits
    with exits['rest'], exits['solo'] (as [alone] if not given) or exits['alone'] by the
    session its -m expression names; a failing one prints a pytest summary line first."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/sh
echo "args: $*"
case "$*" in *"not timing"*) s=rest e={exits['rest']};; *"qemu and solo"*) s=solo
  e={exits.get('solo', exits['alone'])};; *) s=alone e={exits['alone']};; esac
[ "$e" = 1 ] && echo "FAILED tests/test_$s.py::test_it - AssertionError: $s broke"
grep -E ':cpu[,:]|^0::' /proc/self/cgroup | head -1
echo "nice: $(ps -o ni= -p $$ | tr -d ' ')"
exit "$e"
""")
    fake.chmod(0o755)
    return fake


def _run(fake: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), str(fake), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_two_sessions_side_by_side_with_the_rest_below_the_timing_tests(tmp_path: Path) -> None:
    res = _run(_fake_python(tmp_path, {"rest": 0, "alone": 0}), "3", APART="")
    assert res.returncode == 0, res.stdout + res.stderr
    rest = [ln for ln in res.stdout.splitlines() if ln.startswith("[rest]")]
    alone = [ln for ln in res.stdout.splitlines() if ln.startswith("[alone]")]
    assert any('-m qemu and not timing and not nfs -v -n 3 --dist loadgroup' in ln for ln in rest)
    assert any('-m qemu and (timing or nfs) -v --durations' in ln for ln in alone)
    assert "[rest]  nice: 19" in rest and "[alone] nice: 0" in alone
    idle = "idle CPU priority (cgroup " in res.stdout
    assert idle or "nice 19 (no writable cpu cgroup)" in res.stdout
    if idle:            # [rest] ran in its own cgroup, and it is gone after
        cgroup = res.stdout.split("(cgroup ", 1)[1].split(")", 1)[0]
        assert any(ln.endswith(cgroup.split("/sys/fs/cgroup/cpu", 1)[-1]) for ln in rest)
        assert not Path(cgroup).exists()
    assert "kvmlab: integration tier took" in res.stdout


@pytest.mark.parametrize("rest,alone,subset,code", [
    (0, 1, False, 1),        # a failure in either session fails the tier
    (1, 0, False, 1),
    (5, 0, False, 5),        # the whole tier must run tests in both sessions
    (5, 0, True, 0),         # a subset may leave one empty
    (5, 5, True, 5),         # but not both
])
def test_the_exit_code(tmp_path: Path, rest: int, alone: int, subset: bool, code: int) -> None:
    fake = _fake_python(tmp_path, {"rest": rest, "alone": alone})
    res = _run(fake, "0", *(["-k", "mirror"] if subset else []), APART="1")
    assert res.returncode == code, res.stdout + res.stderr
    assert "then timing tests 2 at a time, then the solo ones alone" in res.stdout
    assert "[rest]  nice: 0" in res.stdout          # alone on the host: not lowered
    # apart, the NFS tests run in [rest] (their xdist group), the timing tests after it,
    # the solo ones last, one at a time
    assert "-m qemu and not timing -v" in res.stdout
    assert "-m qemu and timing and not solo -v -n 2 --dist loadgroup" in res.stdout
    assert "[solo]  args: -m pytest -m qemu and solo -v" in res.stdout


@pytest.mark.parametrize("alone,solo,code", [
    (0, 1, 1),               # a solo test's failure is the tier's
    (1, 0, 1),
    (5, 0, 0),               # [alone] or [solo] may be empty, not both
    (0, 5, 0),
    (5, 5, 5),
    (5, 1, 1),
])
def test_solo_is_the_second_half_of_alone(tmp_path: Path, alone: int, solo: int,
                                         code: int) -> None:
    fake = _fake_python(tmp_path, {"rest": 0, "alone": alone, "solo": solo})
    res = _run(fake, "2", APART="1")
    assert res.returncode == code, res.stdout + res.stderr
    # the tier's line gives [alone]'s combined code (the tier's exit here) and [solo]'s own
    assert f"[alone] exit {code}, [solo] exit {solo})" in res.stdout, res.stdout


def test_what_failed_is_repeated_at_the_end(tmp_path: Path) -> None:
    """A log's tail (all CI shows) names every failed test, whichever session it was in;
    a green tier adds nothing, and the runner's temp file is gone after either."""
    before = set(Path(tempfile.gettempdir()).glob("kvmlab-integration.*"))
    res = _run(_fake_python(tmp_path, {"rest": 1, "alone": 0, "solo": 1}), "2", APART="1")
    assert res.returncode == 1, res.stdout + res.stderr
    tail = res.stdout.split("kvmlab: integration tier took", 1)[1].splitlines()
    assert tail[1:] == ["kvmlab: what failed:",
                        "[rest]  FAILED tests/test_rest.py::test_it - AssertionError: rest broke",
                        "[solo]  FAILED tests/test_solo.py::test_it - AssertionError: solo broke"]
    res = _run(_fake_python(tmp_path, {"rest": 0, "alone": 0}), "2", APART="1")
    assert res.returncode == 0 and "what failed" not in res.stdout
    assert set(Path(tempfile.gettempdir()).glob("kvmlab-integration.*")) == before


def test_alone_workers_one_at_a_time_or_refused(tmp_path: Path) -> None:
    res = _run(_fake_python(tmp_path, {"rest": 0, "alone": 0}), "2", APART="1",
               ALONE_WORKERS="1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "-m qemu and timing and not solo -v --durations" in res.stdout
    res = _run(_fake_python(tmp_path, {"rest": 0, "alone": 0}), "2", APART="1",
               ALONE_WORKERS="two")
    assert res.returncode == 2
    assert "ALONE_WORKERS=two must be 1 to 9" in res.stderr and "args:" not in res.stdout
