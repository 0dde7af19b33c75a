"""Notebooks as processes: a papermill run into a run folder, sweeps of many runs,
the live watch of a run, and the kernel they run on.
"""
