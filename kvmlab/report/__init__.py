"""Documents to share: the report of runs, notebooks and sweeps, and the seed's
lab note, with their Jinja templates.
"""
