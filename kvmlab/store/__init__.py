"""Files on disk: run folders and their streams, the temp dirs kvmlab owns (reaped
when their owner was killed), and sweep folders.
"""
