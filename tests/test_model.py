"""Pure validation of mirror requests (no QEMU needed for these checks themselves)."""

import pytest

from kvmlab.errors import BadInput, KvmlabError
from kvmlab.model import JobInfo, MirrorSpec


@pytest.mark.parametrize("gran", [0, 256, 3000, 65537, 128 * 1024 * 1024, -512])
def test_granularity_must_be_power_of_two_in_range(gran: int) -> None:
    with pytest.raises(BadInput, match="granularity"):
        MirrorSpec("drive0", "/x.img", granularity=gran)


@pytest.mark.parametrize("gran", [512, 65536, 64 * 1024 * 1024])
def test_granularity_bounds_accepted(gran: int) -> None:
    assert MirrorSpec("drive0", "/x.img", granularity=gran).qmp_arguments()["granularity"] == gran


@pytest.mark.parametrize("speed", [-1, 1.5, "fast", True])
def test_speed_must_be_non_negative_int(speed: object) -> None:
    with pytest.raises(BadInput, match="speed"):
        MirrorSpec("drive0", "/x.img", speed=speed)  # type: ignore[arg-type]


@pytest.mark.parametrize("field,value", [("sync", "half"), ("mode", "reuse"),
                                         ("on_target_error", "panic"), ("copy_mode", "fast")])
def test_enums_checked(field: str, value: str) -> None:
    with pytest.raises(BadInput, match=field):
        MirrorSpec("drive0", "/x.img", **{field: value})


def test_errors_are_one_line_kvmlab_errors() -> None:
    with pytest.raises(KvmlabError) as info:
        MirrorSpec("drive0", "/x.img", buf_size=0)
    assert "\n" not in str(info.value)


def test_qmp_arguments_map_names() -> None:
    args = MirrorSpec("drive0", "/t.img", "raw", sync="top", mode="existing", speed=5,
                      buf_size=1 << 20, copy_mode="write-blocking").qmp_arguments()
    assert args == {"device": "drive0", "target": "/t.img", "format": "raw", "sync": "top",
                    "mode": "existing", "speed": 5, "buf-size": 1 << 20,
                    "on-source-error": "report", "on-target-error": "report",
                    "copy-mode": "write-blocking"}


def test_remote_targets_detected() -> None:
    assert MirrorSpec("d", "nfs://127.0.0.1/export/x.img").is_remote
    assert not MirrorSpec("d", "/data/x.img").is_remote


def test_jobinfo_from_qemu_reply() -> None:
    # A query-block-jobs entry as QEMU 7.2 returned it in a recorded run.
    raw = {"auto-finalize": True, "io-status": "ok", "device": "drive0", "auto-dismiss": True,
           "busy": False, "len": 17563648, "offset": 4325376, "status": "running",
           "paused": False, "speed": 8388608, "ready": False, "type": "mirror"}
    info = JobInfo.from_qmp(raw)
    assert (info.id, info.remaining, info.status) == ("drive0", 17563648 - 4325376, "running")


@pytest.mark.parametrize("outcome,action,forced,words", [
    ("BLOCK_JOB_COMPLETED", "cancel", False, "point-in-time copy of vda"),
    ("BLOCK_JOB_COMPLETED", "complete", False, "completed (pivot)"),
    ("BLOCK_JOB_CANCELLED", "cancel", False, "cancelled before READY"),
    ("BLOCK_JOB_CANCELLED", "cancel", True, "force-cancelled while paused"),
    ("BLOCK_JOB_COMPLETED", "cancel", True, "point-in-time copy of vda"),  # force at READY
])
def test_a_jobs_end_is_said_as_what_it_means_for_the_target(outcome: str, action: str,
                                                            forced: bool, words: str) -> None:
    from kvmlab.lab.session import end_meaning
    said = end_meaning(outcome, None, action, "t.qcow2", "vda", forced)
    assert words in said and "t.qcow2" in said
    assert end_meaning(outcome, "EIO", action, "t.qcow2", "vda").startswith("failed (EIO)")
