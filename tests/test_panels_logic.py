"""The row of panels without a VM: what it refuses, and that a refused one leaves quietly."""

from __future__ import annotations

import gc
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from kvmlab.errors import BadInput
from kvmlab.lab.widgets import MirrorPanel, MirrorPanels


def test_a_row_refused_in_its_constructor_is_collected_without_an_error() -> None:
    """ipywidgets closes a widget when it is collected; a row refused before it had panels
    (a disk named twice) must close then too, or Python prints an ignored AttributeError."""
    session: Any = SimpleNamespace(drives=["drive0", "data1"])
    seen: list[BaseException | None] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    try:
        with pytest.raises(BadInput, match="one panel per disk"):
            MirrorPanels(session, ["data1", "data1"])
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert seen == [] and MirrorPanel.current is None
