"""Faults to put a mirror's target through, each marked in the run's recording.

Every fault is a context manager or a function that calls a *mark* callback
(normally :meth:`kvmlab.live.record.Recorder.mark`) when it starts and ends, so the
plots can shade the fault window.  Every process a fault starts is stopped on
every exit path.

- :class:`NfsServer` -- a real NFS server (nfs-ganesha + rpcbind on loopback),
  with :meth:`~NfsServer.outage` in ``stop`` or ``freeze`` mode;
- :class:`NbdServer` -- a ``qemu-storage-daemon`` NBD export on a unix socket,
  suspended with SIGSTOP/SIGCONT or killed and restarted;
- :func:`blkdebug_target` -- a target URL whose writes fail with EIO;
- :class:`SmallTmpfs` -- a tiny tmpfs for "no space left on device".
"""

from kvmlab.faults.base import Mark, ProcessGroup, marked
from kvmlab.faults.nbd import NbdServer
from kvmlab.faults.nbdkit import NbdkitProxy
from kvmlab.faults.nfs import NfsServer
from kvmlab.faults.storage import SmallTmpfs, blkdebug_target

__all__ = ["Mark", "NbdServer", "NbdkitProxy", "NfsServer", "ProcessGroup", "SmallTmpfs", "blkdebug_target",
           "marked"]
