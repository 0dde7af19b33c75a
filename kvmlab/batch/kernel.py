"""The IPython kernel kvmlab's notebook runs use: ipykernel, with no TCP port at all.

On the IPC transport ipykernel still binds one TCP port on 127.0.0.1: the IOPub thread's
pipe for output from forked child processes, which any local user can reach.  kvmlab's
notebooks print from the kernel process only (QEMU, qemu-img and friends write to their own
files), so that pipe is switched off here, and the kernel listens on unix sockets alone.
"""

from __future__ import annotations

from typing import Any

from ipykernel import iostream
from ipykernel.kernelapp import launch_new_instance

_init = iostream.IOPubThread.__init__


def _init_without_pipe(self: Any, socket: Any, pipe: bool = False, session: Any = False) -> None:
    _init(self, socket, pipe=False, session=session)  # type: ignore[no-untyped-call]


def main() -> None:
    """Start the kernel (argv as ``python -m ipykernel_launcher``)."""
    iostream.IOPubThread.__init__ = _init_without_pipe  # type: ignore[method-assign]
    launch_new_instance()


if __name__ == "__main__":
    main()
