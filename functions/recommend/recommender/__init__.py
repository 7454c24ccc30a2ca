"""The recommend function's internals: settings, item index, ranking, Firestore, experiments.

Kept as a package next to ``main.py`` so the function deploys from its own folder;
``main.py`` holds only the thin HTTP handlers. ``experiments`` (the running experiments and a
request's arm) and ``served`` (served records to Pub/Sub, off the request path) are issue 19's.
"""
