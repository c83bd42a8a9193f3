"""Autoscaling benchmark: replays arrival traces against Shoal's policy and a KEDA + HPA model.

Not part of the test suite; see ``python -m bench.autoscale --help`` and RESULTS.md.
"""
