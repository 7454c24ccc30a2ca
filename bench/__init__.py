"""Benchmarks: one module or package per benchmark, on one shared measurement module (:mod:`bench.measure`).

Each runs as ``python -m bench.<name>`` (``make bench-<name>``), writes a JSON report under
``reports/bench/`` and prints a table; figures and their history are in ``docs/benchmarks.md``.
"""
