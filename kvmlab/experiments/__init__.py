"""The seed's experiments, each a function that reads like the seed's steps.

Every experiment records a run (``data/runs/<run-id>/``) and ends in a
machine-checked verdict.  Experiments never draw: plots read the saved run.
"""

from .common import ExperimentResult, LabRun, verify_image
from .mirror_basic import mirror_basic

__all__ = ["ExperimentResult", "LabRun", "verify_image", "mirror_basic"]
