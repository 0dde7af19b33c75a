"""Files and dirs kvmlab acts on, trusted only when this user made them, and kept private.

kvmlab runs as root on hosts that other people use.  Whatever it reads back to decide an
action (a reaped dir's ``on-reap.json``, ``owner.pid`` and ``run-folder``, the NFS lock,
the accel cache) could have been planted by another local user in a shared place such as
``/tmp``.  So a dir is trusted only if ``lstat`` shows a real dir owned by our effective
uid with no access for others, and a file only if it is opened with ``O_NOFOLLOW`` and
``fstat`` shows a regular file of ours that nobody else may write.

Run data can hold whatever the guest wrote, so everything kvmlab writes is private:
:func:`private_umask` sets umask 077, or 027 with ``KVMLAB_SHARE_GROUP`` (a team's group
then reads runs; :func:`private_dir` gives the dirs that group and the setgid bit).

A full disk is said in one line (:func:`writing` turns ``ENOSPC`` into :class:`NoSpace`),
and a :class:`Reserve` keeps room for a run's last words (its final ``run.json``).
"""

from __future__ import annotations

import errno
import fcntl
import grp
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmlab.errors import KvmlabError, NoSpace, Untrusted

log = logging.getLogger(__name__)

#: the group (name or number) that may read run data, for teams; unset: only us
SHARE_GROUP_ENV = "KVMLAB_SHARE_GROUP"
#: the largest file :func:`read_owned` reads (they are a pid, a path, an argv)
READ_LIMIT = 1 << 16

_mentioned: set[str] = set()


def share_gid() -> int | None:
    """The gid of ``$KVMLAB_SHARE_GROUP``, or None when unset.

    :raise Untrusted: the group does not exist (one line; nothing is created).
    """
    name = os.environ.get(SHARE_GROUP_ENV, "").strip()
    if not name:
        return None
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise Untrusted(f"{SHARE_GROUP_ENV}={name}: no such group") from None


def private_umask() -> int:
    """Set this process's umask so that what kvmlab writes is ours alone (077), or also
    readable by the share group (027).  Children (QEMU, qemu-img, kernels) inherit it.
    Returns the umask set."""
    mask = 0o027 if share_gid() is not None else 0o077
    os.umask(mask)
    return mask


def mention_once(key: str, message: str) -> None:
    """Log *message* (a warning) the first time *key* is seen in this process."""
    if key not in _mentioned:
        _mentioned.add(key)
        log.warning("%s", message)


def owned_dir(path: Path, *, private: bool = True) -> bool:
    """Is *path* a real dir (not a symlink) owned by us, with no access for others
    (with *private*)?  The group may read it when it is the share group."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    if private:
        allowed = 0o050 if st.st_gid == share_gid() else 0
        if st.st_mode & 0o077 & ~allowed:
            return False
    return True


def check_owned_dir(path: Path, what: str = "folder", *, private: bool = True) -> None:
    """:func:`owned_dir`, or :class:`Untrusted` saying why not."""
    if not owned_dir(path, private=private):
        try:
            st = os.lstat(path)
            why = ("a symlink" if stat.S_ISLNK(st.st_mode) else
                   f"owned by uid {st.st_uid}" if st.st_uid != os.geteuid() else
                   "not a folder" if not stat.S_ISDIR(st.st_mode) else
                   f"open to others (mode {stat.S_IMODE(st.st_mode):04o})")
        except OSError as err:
            why = err.strerror or "missing"
        raise Untrusted(f"{what} {path} is not ours to trust: {why}")


def open_owned(path: Path) -> int:
    """A read-only fd of *path*, opened without following a symlink, if it is a regular
    file owned by us that neither group nor others may write (the caller closes it).

    :raise Untrusted: anything else (a symlink, another user's file, a FIFO...).
    :raise FileNotFoundError: no such file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise Untrusted(f"{path} is not ours to trust: {err.strerror}") from err
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise Untrusted(f"{path} is not ours to trust (uid {st.st_uid}, "
                        f"mode {stat.S_IMODE(st.st_mode):04o})")
    return fd


def read_owned(path: Path, limit: int = READ_LIMIT) -> str:
    """The text of *path* if :func:`open_owned` trusts it.

    :raise Untrusted: anything else (a symlink, another user's file, a FIFO...).
    :raise FileNotFoundError: no such file.
    """
    with os.fdopen(open_owned(path), "rb") as fh:
        return fh.read(limit).decode("utf-8", errors="replace")


def private_dir(path: Path, what: str = "folder") -> Path:
    """Make *path* (and missing parents) if needed, as a dir of ours with no access for
    others (0700; 2750 with the share group's gid under ``KVMLAB_SHARE_GROUP``).  An
    existing dir of ours that is too open is tightened; one that is not ours is refused.

    :raise Untrusted: *path* exists and is not a dir of ours.
    """
    gid = share_gid()
    mode = 0o2750 if gid is not None else 0o700
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        check_owned_dir(path, what, private=False)     # says why (a symlink, not a dir)
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise Untrusted(f"{what} {path} is not ours to trust: owned by uid {st.st_uid}")
        if gid is not None and st.st_gid != gid:
            os.fchown(fd, -1, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace *path* with *data* all at once: written to a fresh temp file beside it
    (``O_EXCL``: a planted file or symlink of that name is never followed), synced, then
    renamed over *path* (a rename replaces a symlink, never writes through it).  The file
    gets *mode*, else the umask's.  On failure (a full disk) *path* is left as it was."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is None:
            mask = os.umask(0)
            os.umask(mask)
            mode = 0o666 & ~mask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def state_dir() -> Path:
    """A private dir for this host's kvmlab state that no other user can reach (the NFS
    lock): ``/run/kvmlab`` as root, else ``<tmp>/kvmlab-state-<uid>``.

    :raise Untrusted: it exists and is not ours (someone else made it first).
    """
    base = Path("/run") if os.geteuid() == 0 and os.access("/run", os.W_OK) \
        else Path(tempfile.gettempdir())
    name = "kvmlab" if base == Path("/run") else f"kvmlab-state-{os.geteuid()}"
    folder = base / name
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    check_owned_dir(folder, "kvmlab's state folder")
    return folder


def open_lock(path: Path) -> int:
    """A lock file's descriptor: created 0600 if missing, never through a symlink, and
    only if it is ours.

    :raise Untrusted: it is a symlink or another user's file.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise Untrusted(f"lock {path} is not ours to trust: {err.strerror}") from err
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise Untrusted(f"lock {path} is not ours to trust (uid {st.st_uid})")
    return fd


#: room a :class:`Reserve` keeps (a final ``run.json`` is a few KiB, written twice over
#: by a rename)
RESERVE_BYTES = 64 << 10


def is_no_space(err: BaseException) -> bool:
    """Is *err* a full disk (or a full quota)?"""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def writing(folder: Path, what: str) -> Iterator[None]:
    """A full disk inside the block becomes :class:`NoSpace`: ``no space left on
    <folder> while writing <what>``; other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        if is_no_space(err):
            raise NoSpace(f"no space left on {folder} while writing {what}") from err
        raise


class Reserve:
    """Room kept in *folder* for what must be written when everything else failed: a file
    of :data:`RESERVE_BYTES` made now, removed by :meth:`release` just before that write.

    :raise NoSpace: there is not even that much room now (nothing is left behind).
    """

    def __init__(self, folder: Path, name: str = ".space-reserve") -> None:
        self.path = folder / name
        with writing(folder, "its space reserve"):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)
                except OSError as err:
                    if is_no_space(err):
                        raise
                    os.write(fd, bytes(RESERVE_BYTES))     # a file system without fallocate
            except BaseException:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            os.close(fd)

    def release(self) -> None:
        """Give the room back (idempotent)."""
        self.path.unlink(missing_ok=True)


def take_lock(path: Path, wait_s: float, waiting: str, busy: KvmlabError) -> int:
    """Hold the ``flock`` on *path* (:func:`open_lock`: ours, no symlink), waiting up to
    *wait_s* while someone else holds it; *waiting* is logged once if it must wait.  The
    kernel lets go when the holder dies, so a killed run never blocks the next.

    :return: the lock's descriptor (close it to let go).
    :raise KvmlabError: *busy*, when the lock was held for *wait_s*.
    """
    fd = open_lock(path)
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise busy from None
            if not told:
                log.warning("%s", waiting)
                told = True
            time.sleep(0.2)
