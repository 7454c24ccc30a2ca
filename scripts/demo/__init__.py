"""The main job end to end, locally: emulators, data, model, pipeline, functions, live stream.

    make demo                              # synthetic catalogue and history
    make demo DEMO_ARGS="--data PATH"      # a user's files (MovieLens 100K / latest-small,
                                           # `user item item ...` lines, events CSV/JSONL)
    python -m scripts.demo --short         # a quick version (the end-to-end test runs it)

Steps (each prints progress; Ctrl-C stops everything it started):
 1. start the Pub/Sub and Firestore emulators (fresh, on the demo's own ports);
 2. build the data and split it into history (for training) and a live stream;
 3. evaluate the two-tower against most-popular on the history (a short quality table);
 4. train the initial model, publish it to Firestore, seed users from their history;
 5. start the streaming pipeline (DirectRunner) and the recommend and ingest functions
    (functions-framework, production serving settings from functions/recommend/serving.env);
 6. replay the live stream at a steady rate through the ingest function and Pub/Sub, with
    duplicates and invalid events, while measuring freshness with probe events; show a few
    users' recommendations before and after their new views; add a new catalogue item and
    show it recommended to matching users; measure serving latency under load;
 7. fine-tune (warm start) on the events the pipeline archived; show the pipeline and the
    function switching to the new version without a restart; forget a user through the
    ingest function (``DELETE /users/{id}``) and check it stays forgotten across a restart;
 8. an online experiment with two arms: simulated users click by taste, the pipeline attributes
    the clicks to the served lists, per-arm CTR with intervals is read back live;
 9. stop everything; write reports/demo/summary.json and reports/<timestamp>/report.md.

Reading order: ``__main__`` (command line, exit codes, outputs) -> ``run`` (the steps in
order) -> ``steps/`` (one module per step). Around them: ``config`` (what the demo can be
told), ``context`` (the state the steps share), ``figures`` (what is measured), ``summary``
and ``report`` (what is written), ``console``, ``data``, ``clients`` and ``measure``.
"""
