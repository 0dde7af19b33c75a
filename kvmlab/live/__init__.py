"""Steer and record block jobs while they run: the job API and its waits, the
recorder, and the online convergence predictor (no pandas in the job API).
"""
