"""The seed's experiments, each a function that reads like the seed's steps.

Every experiment records a run (``data/runs/<run-id>/``) and ends in a
machine-checked verdict.  Experiments never draw: plots read the saved run.

=====  ==========================  ===============================================
seed   function                    what it shows
=====  ==========================  ===============================================
E1     :func:`mirror_basic`        mirror during guest file operations, cancel, verify
E2     :func:`mirror_nfs_outage`   mirror to NFS through a server outage, verify
E3     :func:`commit_stopped`      commit an overlay into its base while stopped
E4     :func:`pivot`               block_job_complete switches the VM's image
E5     :func:`double_pivot`        two pivots in a row
E6     :func:`remove_source`       the old image can be moved/deleted after a pivot
E7     :func:`shallow_existing`    ``-n`` mirror onto an overlay of the same base
--     :func:`target_fault`        NBD suspend/down, EIO, ENOSPC, throttle on the target
C2/3   :func:`consistency_study`   what a live copy holds: nothing/stop/sync+stop/freeze
C3     :func:`convergence_pressure` a guest outpacing the copy: background vs active mode
C1     :func:`snapshot_methods`    mirror vs backup vs external snapshot, each quiesced 3 ways
--     :func:`scenario`            one row of the scenario catalogue (tp-qemu/iotest cases)
--     :func:`storage_migration`   a busy VM and its disks moved to a second QEMU (NBD + migrate)
--     :func:`workload_cost`       a fio profile's cost to the mirror, and the mirror's to it
=====  ==========================  ===============================================
"""

from kvmlab.experiments.commit_stopped import commit_stopped
from kvmlab.experiments.common import ExperimentResult, LabRun, verify_image
from kvmlab.experiments.consistency import CUTS, consistency_study
from kvmlab.experiments.convergence import convergence_pressure
from kvmlab.experiments.migration import storage_migration
from kvmlab.experiments.mirror_basic import mirror_basic
from kvmlab.experiments.nfs_outage import mirror_nfs_outage
from kvmlab.experiments.pivot import double_pivot, pivot, remove_source
from kvmlab.experiments.scenarios import SCENARIOS, scenario
from kvmlab.experiments.shallow import shallow_existing
from kvmlab.experiments.snapshot_methods import METHODS, QUIESCE, snapshot_methods
from kvmlab.experiments.target_faults import FAULTS, target_fault
from kvmlab.experiments.workloads import workload_cost

#: the seed's conclusion for each experiment, as the summary notebook prints it
SEED_CONCLUSIONS = {
    "E1": "the mirror holds every change the guest made during it",
    "E2": "a mirror survives an NFS outage and resumes, losing nothing",
    "E3": "commit works while the VM is stopped; the data lands in the base",
    "E4": "block_job_complete switches the VM to the mirror, paused or not",
    "E5": "completes can be chained; only the last image grows",
    "E6": "after complete the old image can be moved away",
    "E7": "-n onto an overlay of the same base copies the least data, fastest",
    "C2/3": "with cache=none what the guest wrote reaches the copy; without pausing the "
            "guest nothing guarantees a consistent copy",
    "S": "(kvmlab's own question, not the seed's) other snapshot methods beside the mirror: "
         "blockdev-backup and an external snapshot",
}

__all__ = ["ExperimentResult", "LabRun", "verify_image", "mirror_basic", "mirror_nfs_outage",
           "commit_stopped",
           "pivot", "double_pivot", "remove_source", "shallow_existing", "SEED_CONCLUSIONS",
           "target_fault", "FAULTS", "consistency_study", "CUTS", "convergence_pressure",
           "snapshot_methods", "METHODS", "QUIESCE", "scenario", "SCENARIOS", "storage_migration",
           "workload_cost"]
