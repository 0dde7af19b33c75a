"""The names of everything kvmlab writes into a run's events, in one place.

A run's ``events`` stream holds QEMU's events (``BLOCK_JOB_READY``...), the guest's lines
(``guest_*``) and kvmlab's own **marks**: the steps an experiment or a session took
(``cancel``, ``stop``...) and the **windows** it opened and closed (``<window>_start`` /
``<window>_end``).  Recorders, experiments and fault injectors write these names;
:mod:`kvmlab.analysis` and :mod:`kvmlab.plots` read them.  A name used anywhere else as a
bare string is a bug (``tests/test_marks.py`` checks the package for it).
"""

from __future__ import annotations

from typing import Final

# -- steps (one mark each) ---------------------------------------------------------------
RECORDER_START: Final = "recorder_start"
RECORDER_STOP: Final = "recorder_stop"
ATTACH: Final = "attach"                    #: the recorder attached to a machine
SAMPLE_ERROR: Final = "sample_error"        #: a query-block-jobs sample failed
MIRROR_START: Final = "mirror_start"
READY_SEEN: Final = "ready_seen"
CANCEL: Final = "cancel"
COMPLETE: Final = "complete"
COMMIT: Final = "commit"
PAUSE: Final = "pause"
RESUME: Final = "resume"
SET_SPEED: Final = "set_speed"
STOP: Final = "stop"                        #: the VM's vCPUs stopped (HMP ``stop``)
CONT: Final = "cont"
GUEST_SYNC: Final = "guest_sync"            #: the guest agent ran ``sync`` in the guest
RESUME_AFTER_ERROR: Final = "resume_after_error"
REMIRROR: Final = "remirror"                #: a new mirror onto the target after a failure
GROW_TMPFS: Final = "grow_tmpfs"
SOURCE_MOVED: Final = "source_moved"
SOURCE_DELETED: Final = "source_deleted"
COPY_MODE: Final = "copy_mode"              #: a running mirror switched copy mode
DIVERGING: Final = "diverging"              #: a wait gave up: the job will not converge
SCENARIO_ACTION: Final = "scenario_action"  #: a catalogue scenario acted (a refused command...)
NBD_EXPORTS: Final = "nbd_exports"          #: a migration's destination serves its disks
MIGRATE: Final = "migrate"                  #: the source began migrating RAM and devices
HANDOVER: Final = "handover"                #: the migration completed: the source lets go
SOURCE_QUIT: Final = "source_quit"          #: the source QEMU quit after the handover
LINK_DOWN: Final = "link_down"              #: a migration's NBD link died (its proxies killed)
DEST_KILLED: Final = "dest_killed"          #: the migration's destination QEMU killed
MIGRATE_CANCEL: Final = "migrate_cancel"    #: the migration cancelled (migrate_cancel)
RAM_DIVERGING: Final = "ram_diverging"      #: the RAM predictor said the migration will not converge
DISKS_NOT_READY: Final = "disks_not_ready"  #: a migration gave up waiting for its mirrors' READY

#: steps that change a running job's conditions (the user's hand): a convergence verdict
#: made before one says nothing about after it
CONDITION_CHANGES: Final = (SET_SPEED, COPY_MODE)
#: the guest changed its write rate (the workload's ``change_after_s``): not the user's hand,
#: so the live predictor is not reset, but an alarm before it spoke of other conditions
GUEST_RATE_CHANGE: Final = "guest_rate_change"
STEPS: Final = (RECORDER_START, RECORDER_STOP, ATTACH, SAMPLE_ERROR, MIRROR_START, READY_SEEN,
                CANCEL, COMPLETE, COMMIT, PAUSE, RESUME, SET_SPEED, STOP, CONT,
                RESUME_AFTER_ERROR, REMIRROR, GROW_TMPFS, SOURCE_MOVED, SOURCE_DELETED,
                COPY_MODE, DIVERGING, SCENARIO_ACTION, NBD_EXPORTS, MIGRATE, HANDOVER,
                SOURCE_QUIT, LINK_DOWN, DEST_KILLED, MIGRATE_CANCEL, RAM_DIVERGING,
                DISKS_NOT_READY)

# -- windows (a start and an end mark) ---------------------------------------------------
NFS_OUTAGE: Final = "nfs_outage"
NBD_SUSPEND: Final = "nbd_suspend"
NBD_DOWN: Final = "nbd_down"
EIO: Final = "eio"
ENOSPC: Final = "enospc"
THROTTLE: Final = "throttle"
NBDKIT_DELAY: Final = "nbdkit_delay"        #: every write to the target late (nbdkit's delay filter)
NBDKIT_ERROR: Final = "nbdkit_error"        #: a share of the target's writes fail (nbdkit's error filter)
NBDKIT_RATE: Final = "nbdkit_rate"          #: the target's bandwidth capped (nbdkit's rate filter)
NBDKIT_PAUSE: Final = "nbdkit_pause"        #: the target's requests held (nbdkit's pause filter)
FSFREEZE: Final = "fsfreeze"                #: the guest's file systems frozen: not a fault
#: no job sample for over :data:`kvmlab.live.record.GAP_INTERVALS` intervals: a hole in the
#: record (the recording process was stopped, the host was busy or suspended), not a fault
SAMPLE_GAP: Final = "sample_gap"

#: windows in which the target misbehaves: :func:`kvmlab.analysis.fault_windows`
FAULT_WINDOWS: Final = (NFS_OUTAGE, NBD_SUSPEND, NBD_DOWN, EIO, ENOSPC, THROTTLE, NBDKIT_DELAY,
                        NBDKIT_ERROR, NBDKIT_RATE, NBDKIT_PAUSE)
WINDOWS: Final = (*FAULT_WINDOWS, FSFREEZE, SAMPLE_GAP)


def start(window: str) -> str:
    """The mark that opens *window*: ``<window>_start``."""
    return f"{window}_start"


def end(window: str) -> str:
    """The mark that closes *window*: ``<window>_end``."""
    return f"{window}_end"


# -- QEMU's events that the analysis reads ------------------------------------------------
BLOCK_JOB_READY: Final = "BLOCK_JOB_READY"
BLOCK_JOB_COMPLETED: Final = "BLOCK_JOB_COMPLETED"
BLOCK_JOB_CANCELLED: Final = "BLOCK_JOB_CANCELLED"
BLOCK_JOB_ERROR: Final = "BLOCK_JOB_ERROR"
BLOCK_IO_ERROR: Final = "BLOCK_IO_ERROR"
JOB_ENDED: Final = (BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED)
JOB_STATUS_CHANGE: Final = "JOB_STATUS_CHANGE"
#: the steps that start a block job
JOB_STARTS: Final = (MIRROR_START, COMMIT)

#: the label drawn on plots for each event (windows are labelled by their name)
LABELS: Final = {
    MIRROR_START: "job start", BLOCK_JOB_READY: "READY", PAUSE: "pause", RESUME: "resume",
    SET_SPEED: "speed", CANCEL: "cancel", COMPLETE: "complete",
    BLOCK_JOB_COMPLETED: "completed", BLOCK_JOB_CANCELLED: "cancelled",
    BLOCK_JOB_ERROR: "error", STOP: "stop", CONT: "cont", COMMIT: "commit",
    SOURCE_MOVED: "old image moved", SOURCE_DELETED: "old image deleted",
    BLOCK_IO_ERROR: "I/O error", RESUME_AFTER_ERROR: "resume", REMIRROR: "mirror again",
    COPY_MODE: "copy mode", DIVERGING: "will not converge", SCENARIO_ACTION: "action",
    NBD_EXPORTS: "NBD exports", MIGRATE: "migrate", HANDOVER: "handover",
    SOURCE_QUIT: "source quit", LINK_DOWN: "link down", DEST_KILLED: "destination killed",
    MIGRATE_CANCEL: "migrate_cancel", RAM_DIVERGING: "RAM will not converge",
    DISKS_NOT_READY: "gave up on READY",
    **{start(w): w.replace("_", " ") for w in FAULT_WINDOWS},
    **{end(w): f"{w.replace('_', ' ')} end" for w in FAULT_WINDOWS},
}

#: every name kvmlab itself writes
ALL_MARKS: Final = frozenset(STEPS) | {start(w) for w in WINDOWS} | {end(w) for w in WINDOWS}
