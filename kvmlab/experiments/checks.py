"""Parameter values checked before anything starts, named as the caller named them.

``kvmlab run`` and sweeps call :func:`check_values` on a notebook's parameters (its
defaults with the overrides) before a run folder exists or a VM boots: the run options
(:class:`~kvmlab.experiments.options.RunOptions`), the mirror's own fields as QMP's ``drive-mirror``
validates them (:class:`~kvmlab.model.MirrorSpec`), and the disk sizes.  The experiments
check the same values again when called directly.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvmlab import paths
from kvmlab.errors import BadInput
from kvmlab.experiments.options import RunOptions
from kvmlab.model import MirrorSpec
from kvmlab.qemu import builds as qemu_builds
from kvmlab.qemu.images import FORMATS

#: parameters that are MirrorSpec fields of the same name
MIRROR_FIELDS = ("sync", "speed", "granularity", "buf_size", "on_target_error")
#: the smallest guest disk (an ext4 with the guest's files on it)
MIN_IMAGE_MIB = 16


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadInput(f"{name}={value!r} must be an integer of at least {low}")


def check_values(params: Mapping[str, Any]) -> None:
    """Check the values of *params* whose meaning kvmlab knows.

    :raise BadInput: one line naming the parameter as given (``image_mib``, ``speed``...).
    """
    RunOptions.from_params(params)
    if "builds" in params:                 # 30_qemu_versions: the builds to compare
        for name in str(params["builds"]).split():
            qemu_builds.check_name(name)
    fields = {k: params[k] for k in MIRROR_FIELDS if k in params}
    if fields:
        try:
            MirrorSpec("drive0", "target", **fields)
        except TypeError as err:                  # a value of the wrong kind
            raise BadInput(f"bad mirror parameter: {err}") from err
    if "image_mib" in params:
        _int_at_least("image_mib", params["image_mib"], MIN_IMAGE_MIB)
        _fits_on_disk(params["image_mib"])
    for name in ("disk_format", "target_format"):
        value = params.get(name)
        if value is not None and value not in FORMATS:
            raise BadInput(f"{name}={value!r} is not one of {', '.join(FORMATS)}")
    for name, value in params.items():
        if _is_duration(name) and value is not None:
            _seconds(name, value, zero_ok="timeout" not in name)
    for name in ("fill_mib", "base_fill_mib"):
        if name in params:
            _int_at_least(name, params[name], 0)
            if "image_mib" in params and params[name] > params["image_mib"] * 3 // 4:
                raise BadInput(f"{name}={params[name]} must be at most 3/4 of "
                               f"image_mib={params['image_mib']}")
    for name in ("workload_kib", "rounds", "trials"):
        if name in params:
            _int_at_least(name, params[name], 1)


def _is_duration(name: str) -> bool:
    """``*_s`` and ``*timeout*`` parameters are seconds (``*_kib_s`` and ``*_bps`` rates)."""
    return (name.endswith("_s") and not name.endswith(("_kib_s", "_mib_s"))) or \
        "timeout" in name


def _seconds(name: str, value: Any, zero_ok: bool) -> None:
    if isinstance(value, (list, tuple)):
        for v in value:
            _seconds(name, v, zero_ok)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise BadInput(f"{name}={value!r} must be a number of seconds "
                       f"{'of at least 0' if zero_ok else 'above 0'}")


def _fits_on_disk(image_mib: int) -> None:
    """An image must fit in the free space of the scratch folder's file system."""
    folder = paths.scratch_dir()
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    free_mib = shutil.disk_usage(probe).free // (1 << 20)
    if image_mib > free_mib:
        raise BadInput(f"image_mib={image_mib} is more than the {free_mib} MiB free under "
                       f"{folder}")
