"""Backends: how kvmlab talks to a VM.  One small protocol, several implementations."""

from kvmlab.backends.base import Backend
from kvmlab.backends.qmp import QMPBackend

__all__ = ["Backend", "QMPBackend"]
