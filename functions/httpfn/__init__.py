"""What the HTTP functions share: the error hierarchy and body, the JSON response, env settings.

Installed as a top-level package (``setup.py``) for the repository; the deployment copies
``functions/httpfn/`` next to each function's ``main.py`` as ``httpfn/``.
"""
