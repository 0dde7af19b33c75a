"""Backends: how kvmlab talks to a VM.  One small protocol, several implementations."""

from .base import Backend
from .qmp import QMPBackend

__all__ = ["Backend", "QMPBackend"]
