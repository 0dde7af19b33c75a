"""Interactive use in JupyterLab: notebook helpers, the seed's suites, the panel's
session and widgets, and the comparison of QEMU builds.
"""
