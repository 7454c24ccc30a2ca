"""Helpers shared by the tests and the benchmarks: cached trained models, pipeline processes, rates.

Kept apart from ``bench/`` so that tests never import a benchmark, and apart from ``tests/`` so that
the benchmarks do not import test modules.
"""
