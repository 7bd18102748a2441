"""Comparing measurements: is a candidate better, worse or the same as a baseline, with confidence.

``stats`` compares two samples of per-launch values (one number per fresh runner process) the way
Chromium's Pinpoint does: p = min(Mann-Whitney U, Kolmogorov-Smirnov), DIFFERENT at p <= alpha,
SAME above a sample-size-aware high threshold, UNKNOWN (collect more launches) in between; a
Hodges-Lehmann shift with a bootstrap interval and a practical floor turn DIFFERENT into
WORSE / BETTER / SAME, and a multimodal sample is reported as unstable. ``history`` reads the farm
database: the series of a (model, recipe, device), its baseline (median of the last k good runs)
and its change points (PELT, from the ``ruptures`` library).
"""
