"""LibvirtBackend's pivot while libvirt has not yet taken in QEMU's READY (pure: a stand-in
for libvirt-python's module and the domain, no libvirtd)."""

from __future__ import annotations

import types
from typing import Any

import pytest

from kvmlab.backends import libvirt as lv
from kvmlab.errors import BackendError


class _Err(Exception):
    pass


class _Dom:
    """A domain whose pivot is refused *refusals* times with *message*."""

    def __init__(self, refusals: int, message: str) -> None:
        self.refusals, self.message, self.calls = refusals, message, 0

    def XMLDesc(self, flags: int) -> str:  # noqa: N802 - libvirt's name
        return "<domain><devices><disk><target dev='vda'/></disk></devices></domain>"

    def blockJobAbort(self, disk: str, flags: int) -> int:  # noqa: N802 - libvirt's name
        self.calls += 1
        if self.calls <= self.refusals:
            raise _Err(self.message)
        return 0


def _backend(monkeypatch: pytest.MonkeyPatch, dom: _Dom) -> Any:
    monkeypatch.setattr(lv, "libvirt", types.SimpleNamespace(
        libvirtError=_Err, VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT=2))
    be = object.__new__(lv.LibvirtBackend)
    be.dom, be._closed = dom, False
    return be


def test_a_pivot_not_ready_yet_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dom = _Dom(3, "block copy still active: block job 'x' not ready for pivot yet")
    _backend(monkeypatch, dom).job_complete("vda")
    assert dom.calls == 4


def test_another_refusal_or_a_pivot_never_ready_is_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dom = _Dom(1, "Requested operation is not valid: no job")
    with pytest.raises(BackendError, match="blockJobAbort.pivot.: Requested operation"):
        _backend(monkeypatch, dom).job_complete("vda")
    assert dom.calls == 1
    monkeypatch.setattr(lv, "PIVOT_WAIT_S", 0.2)
    dom = _Dom(10**6, "not ready for pivot yet")
    with pytest.raises(BackendError, match="not ready for pivot yet"):
        _backend(monkeypatch, dom).job_complete("vda")
    assert 2 <= dom.calls < 20
