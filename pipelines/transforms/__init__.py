"""Building blocks of the streaming pipeline (:mod:`pipelines.streaming`).

Each module holds small named ``PTransform``\\s and ``DoFn``\\s with I/O only at the edges:

* :mod:`~pipelines.transforms.parse`: parse and validate, dead-letter invalid messages.
* :mod:`~pipelines.transforms.user_state`: dedup by ``event_id`` and per-user bounded history.
* :mod:`~pipelines.transforms.model_watcher`: the current towers, hot-reloaded from ``models/current``.
* :mod:`~pipelines.transforms.embed`: user and new-item embeddings, batched per bundle.
* :mod:`~pipelines.transforms.firestore_io`: batched, idempotent Firestore reads and writes.
* :mod:`~pipelines.transforms.trending`: sliding-window item counts and the ranked trending list.
* :mod:`~pipelines.transforms.archive`: windowed JSON-lines event archive for training.
* :mod:`~pipelines.transforms.direct_pubsub`: DirectRunner-only Pub/Sub read tuning and drain.
"""
