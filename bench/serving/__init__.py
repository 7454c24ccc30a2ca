"""Serving benchmark of the recommend function vs a bare read and find_nearest (``make bench-serving``).

Serves the function locally with functions-framework (gunicorn) under several worker/thread/BLAS
settings on a trained 100,000-item catalogue (:mod:`bench.serving.catalogue`) and 1,000 users in its
own Firestore emulator, and in the same run two baselines with the same settings (``bare_read``, the
I/O floor, and ``find_nearest``, Firestore's vector query), loaded by ``wrk`` on loopback; plus
the per-request retrieval and ranking CPU in process and an IVF grid. Baselines run interleaved with
the function because only figures from one run on the shared machine compare.

    python -m bench.serving [--items 100000] [--duration 10] [--connections 16]

Writes ``reports/bench/serving.json`` and prints a table. Modules: ``config`` (settings), ``data``
(catalogue, users, Firestore), ``compute`` (in process), ``server`` and ``load`` (serving, wrk),
``report`` (combine, targets, table), ``runner`` (command line), ``baselines`` (the baseline
handlers), ``catalogue`` (the trained model), ``ivf_recall`` (the IVF grid on another artefact),
``experiment`` (the ``recommend_experiment`` row: two arms running, served records published to a
Pub/Sub emulator topic, interleaved with ``recommend``).
"""
