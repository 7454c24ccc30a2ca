"""The recommend function's internals: configuration, item index, ranking, Firestore access.

Kept as a package next to ``main.py`` so the function deploys from its own folder;
``main.py`` holds only the thin HTTP handlers.
"""
