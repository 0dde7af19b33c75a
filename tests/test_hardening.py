"""A root kvmlab on a shared host: what another local user (a real unprivileged one,
``setpriv --reuid=65534``) can plant or reach, and what kvmlab then does."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from kvmlab import paths, trust
from kvmlab.errors import Untrusted
from kvmlab.store.runs import RunDir, mark_killed
from kvmlab.store.tmpdirs import OWNER, RUN_FOLDER, owned_tmpdir, reap_stale_tmpdirs

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are on a root kvmlab")


def nobody(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run *argv* as the unprivileged user."""
    return subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=60,
                          check=check)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def planted() -> Iterator[Path]:
    """A ``kvmlab-*`` dir in the shared temp dir, made by the unprivileged user."""
    d = Path(tempfile.gettempdir()) / f"kvmlab-vm-planted{os.getpid()}"
    nobody("mkdir", "-m", "0700", str(d))
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=True)


def test_the_reaper_runs_nothing_another_user_planted(planted: Path, tmp_path: Path) -> None:
    proof = tmp_path / "pwned"
    nobody("sh", "-c", f"echo {dead_pid()} > {planted}/{OWNER}")
    nobody("sh", "-c", f"echo '[\"touch\", \"{proof}\"]' > {planted}/on-reap.json")
    assert planted.stat().st_uid == NOBODY
    reap_stale_tmpdirs()
    assert not proof.exists(), "the reaper ran another user's command as root"
    assert planted.is_dir(), "the reaper removed another user's folder"


def test_the_reaper_writes_into_no_run_folder_it_is_pointed_at(planted: Path,
                                                               tmp_path: Path) -> None:
    """Another user's folder names a run folder of theirs whose temp file is a symlink to
    a root-only file: root must not write through it."""
    secret = tmp_path / "root-only"
    secret.write_text("untouched\n")
    secret.chmod(0o600)
    run = planted / "run"
    nobody("mkdir", str(run))
    token = {"host": os.uname().nodename, "pid": dead_pid(), "start": 1}
    nobody("sh", "-c", f"echo '{json.dumps({'status': 'running', 'owner': token})}' > "
           f"{run}/run.json")
    nobody("ln", "-s", str(secret), f"{run}/.run.json.tmp")
    nobody("sh", "-c", f"echo {dead_pid()} > {planted}/{OWNER}; echo {run} > "
           f"{planted}/{RUN_FOLDER}")
    reap_stale_tmpdirs()
    assert not mark_killed(run)           # a run folder of another user: not ours to change
    assert secret.read_text() == "untouched\n"
    assert json.loads((run / "run.json").read_text())["status"] == "running"


def test_the_reaper_leaves_dirs_of_ours_that_are_not_private(tmp_path: Path) -> None:
    """An open dir of ours (or a symlinked owner.pid) could have been filled by others."""
    open_dir = Path(tempfile.mkdtemp(prefix="kvmlab-vm-open"))
    linked = owned_tmpdir("kvmlab-vm-linked")
    try:
        open_dir.chmod(0o777)
        (open_dir / OWNER).write_text(f"{dead_pid()}\n")
        (tmp_path / "pid").write_text(f"{dead_pid()}\n")
        (linked / OWNER).unlink()
        (linked / OWNER).symlink_to(tmp_path / "pid")
        removed = reap_stale_tmpdirs()
        assert open_dir.is_dir() and linked.is_dir()
        assert open_dir not in removed and linked not in removed
    finally:
        subprocess.run(["rm", "-rf", str(open_dir), str(linked)], check=True)


def test_the_reaper_still_reaps_what_a_killed_run_of_ours_left(tmp_path: Path) -> None:
    """The other outcome: a private dir of ours whose owner died is reaped, its
    on-reap command run."""
    proof = tmp_path / "reaped"
    d = owned_tmpdir("kvmlab-vm-killed")
    (d / "on-reap.json").write_text(json.dumps(["touch", str(proof)]))
    (d / OWNER).write_text(f"{dead_pid()}\n")
    assert d in reap_stale_tmpdirs()
    assert proof.exists() and not d.exists()


def test_the_reaper_searches_the_ram_dir_it_is_given_and_no_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$KVMLAB_RAM`` moves the RAM dir: a killed owner's dir there is reaped, and one in
    another RAM dir (another worker's, another kvmlab's) is not looked at."""
    mine, other = tmp_path / "ram-mine", tmp_path / "ram-other"
    mine.mkdir(mode=0o700)
    other.mkdir(mode=0o700)
    monkeypatch.setenv("KVMLAB_RAM", str(other))
    theirs = owned_tmpdir("kvmlab-bench-", paths.ram_dir())
    monkeypatch.setenv("KVMLAB_RAM", str(mine))
    ours = owned_tmpdir("kvmlab-bench-", paths.ram_dir())
    for d in (theirs, ours):
        (d / OWNER).write_text(f"{dead_pid()}\n")
    reaped = reap_stale_tmpdirs()
    assert ours.parent == mine and ours in reaped and theirs not in reaped
    assert not ours.exists() and theirs.exists()


def test_the_reaper_searches_the_folders_it_is_passed_instead(tmp_path: Path) -> None:
    """Folders passed to the reaper replace the temp, RAM and scratch dirs it would search
    (a test session reaping a killed session's folders): a killed owner's dir in each is
    reaped, and one in the usual temp dir is not looked at."""
    tmp, ram, scratch = (tmp_path / n for n in ("tmp", "ram", "scratch"))
    for d in (tmp, ram, scratch):
        d.mkdir(mode=0o700)
    inside = [owned_tmpdir("kvmlab-vm-", tmp), owned_tmpdir("kvmlab-bench-", ram),
              owned_tmpdir("bench-", scratch)]
    usual = owned_tmpdir("kvmlab-vm-")
    for d in (*inside, usual):
        (d / OWNER).write_text(f"{dead_pid()}\n")
    try:
        reaped = reap_stale_tmpdirs(tmp=tmp, ram=ram, scratch=scratch)
        assert sorted(reaped) == sorted(inside) and not any(d.exists() for d in inside)
        assert usual.exists()
    finally:
        shutil.rmtree(usual, ignore_errors=True)


def test_trust_refuses_symlinks_and_other_users_files(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.write_text("42\n")
    assert trust.read_owned(mine) == "42\n"
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(Untrusted):
        trust.read_owned(tmp_path / "link")
    theirs = tmp_path / "theirs"
    theirs.write_text("1\n")
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(Untrusted, match="not ours to trust"):
        trust.read_owned(theirs)
    mine.chmod(0o666)
    with pytest.raises(Untrusted):                 # others could have written it
        trust.read_owned(mine)
    with pytest.raises(Untrusted):
        trust.open_lock(tmp_path / "link")
    theirs_dir = tmp_path / "theirs.d"
    theirs_dir.mkdir()
    os.chown(theirs_dir, NOBODY, NOBODY)
    with pytest.raises(Untrusted, match="owned by uid 65534"):
        trust.private_dir(theirs_dir)
    assert not trust.owned_dir(theirs_dir)


def test_no_other_user_can_hold_the_nfs_lock() -> None:
    from kvmlab.faults.nfs import lock_path, take_turn
    fd = take_turn(1)
    os.close(fd)
    r = nobody(sys.executable, "-c", f"open({str(lock_path())!r})", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    folder = lock_path().parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == 0


def test_run_data_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        trust.private_umask()
        rd = RunDir.create("t", {}, tmp_path / "runs")
        (rd.path / "console.log").write_text("what the guest wrote")
        for p in [rd.path, *rd.path.iterdir()]:
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
        r = nobody("cat", str(rd.path / "run.json"), check=False)
        assert r.returncode != 0
    finally:
        os.umask(old)


def test_a_share_group_reads_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trust.SHARE_GROUP_ENV, "nogroup")
    old = os.umask(0o022)
    try:
        assert trust.private_umask() == 0o027
        rd = RunDir.create("t", {}, tmp_path / "runs")
        st = rd.path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o2750 and st.st_gid == NOBODY
        assert stat.S_IMODE((rd.path / "run.json").stat().st_mode) == 0o640
        assert (rd.path / "run.json").stat().st_gid == NOBODY
        monkeypatch.setenv(trust.SHARE_GROUP_ENV, "no-such-group-here")
        with pytest.raises(Untrusted, match="no such group"):
            trust.private_umask()
    finally:
        os.umask(old)


def _own_listeners(pids: set[int]) -> list[str]:
    """`ss` lines of the TCP/UDP sockets that *pids* listen on."""
    out = subprocess.run(["ss", "-H", "-ltnup"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines()
            if set(int(p) for p in re.findall(r"pid=(\d+)", line)) & pids]


def _loopback(line: str) -> bool:
    local = line.split()[4]
    host = local.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") or \
        host.startswith("::ffff:127.")


def _kernel_listeners_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
        "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, re, subprocess\n"
        "out = subprocess.run(['ss', '-H', '-ltnup'], capture_output=True, text=True).stdout\n"
        "print('LISTENERS', [l for l in out.splitlines() "
        "if str(os.getpid()) in re.findall(r'pid=(\\d+)', l)])")]
    nbformat.write(nb, path)
    return path


def test_notebook_kernels_listen_on_no_tcp_port(tmp_path: Path,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """Both kernels kvmlab starts: a run's (kvmlab run) and a sweep report's; and neither
    logs a KeyboardInterrupt when it is shut down after a run that went well."""
    from kvmlab.batch import sweep
    nb = _kernel_listeners_notebook(tmp_path / "k.ipynb")
    r = subprocess.run([sys.executable, "-m", "kvmlab", "run", str(nb), "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "LISTENERS []" in (tmp_path / "r" / "k.ipynb").read_text()
    (tmp_path / "s").mkdir()
    out = sweep.make_report(tmp_path / "s", notebook=nb)
    assert "LISTENERS []" in out.read_text()
    assert "LISTENERS [" in out.read_text()     # the probe did run
    assert "KeyboardInterrupt" not in r.stderr + capfd.readouterr().err


@pytest.mark.qemu
@pytest.mark.nfs
def test_nfs_stack_is_loopback_only_and_refuses_other_users(scratch: Path) -> None:
    from kvmlab.faults import NfsServer
    scratch.chmod(0o755)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(scratch / "x.img"), "1M"],
                   check=True)
    with NfsServer(scratch) as nfs:
        assert nfs.server is not None and nfs.rpcbind is not None, "rpcbind was not ours"
        pids = {nfs.server.pid, nfs.rpcbind.pid}
        pids |= {int(p) for p in subprocess.run(["pgrep", "-P", str(nfs.rpcbind.pid)],
                                                capture_output=True, text=True).stdout.split()}
        lines = _own_listeners({p for p in pids if p})         # rpcbind runs supervised
        assert any(":111 " in line for line in lines) and any(":2049 " in line for line in lines)
        assert all(_loopback(line) for line in lines), lines
        url = nfs.url("x.img")
        ok = subprocess.run(["qemu-img", "info", url], capture_output=True, text=True,
                            timeout=60)
        assert ok.returncode == 0, ok.stderr            # QEMU as root: served
        read = nobody("qemu-img", "info", f"{url}?uid=0&gid=0", check=False)
        assert read.returncode != 0 and "virtual size" not in read.stdout
        made = nobody("qemu-img", "create", "-f", "raw", nfs.url("y.img") + "?uid=0&gid=0",
                      "1M", check=False)
        assert made.returncode != 0 and not (scratch / "y.img").exists()


@pytest.mark.qemu
def test_qemu_and_the_nbd_daemon_listen_on_no_network_port(scratch: Path) -> None:
    """A lab VM (QMP, serial, guest agent) and the NBD target's qemu-storage-daemon: unix
    sockets only, so `ss` shows no TCP or UDP listener of theirs at all."""
    from kvmlab.faults import NbdServer
    from kvmlab.qemu import images
    from kvmlab.vm.machine import Machine
    disk = scratch / "disk.qcow2"
    images.make_guest_disk(disk, 32)
    target = images.create(scratch / "t.raw", 32 << 20)
    with Machine(disk, accel="tcg") as vm, NbdServer(target, "raw") as nbd:
        vm.wait_guest("ready", timeout=60)
        assert vm.pid and nbd.daemon is not None and nbd.daemon.pid
        assert _own_listeners({vm.pid, nbd.daemon.pid}) == []
        assert nbd.socket.exists()                       # it does serve, on a unix socket


@pytest.mark.qemu
@pytest.mark.nfs
def test_a_killed_owner_leaves_no_nfs_daemon(scratch: Path) -> None:
    """kill -9 of the process that started the NFS stack: ganesha dies with it
    (pdeathsig), and so does rpcbind, although it runs as its own user (which clears a
    parent-death signal): its root supervisor stops it."""
    import signal
    import time
    script = ("import sys, time\n"
              "from kvmlab.faults import NfsServer\n"
              f"srv = NfsServer({str(scratch)!r})\n"
              "srv.start()\n"
              "print(srv.rpcbind.pid, srv.server.pid, flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        daemons = subprocess.run(["pgrep", "-P", str(pids[0])], capture_output=True,
                                 text=True).stdout.split()            # rpcbind itself
        assert daemons, "no rpcbind under its supervisor"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        watched = [*pids, *map(int, daemons)]
        for _ in range(100):
            alive = [p for p in watched if Path(f"/proc/{p}").exists()
                     and "zombie" not in Path(f"/proc/{p}/status").read_text()]
            if not alive:
                break
            time.sleep(0.1)
        assert not alive, f"left running after kill -9 of their owner: {alive}"
    finally:
        proc.kill()
    reap_stale_tmpdirs()                # what the next launch does: the killed one's dir
