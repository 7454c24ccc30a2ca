"""functions-framework's gunicorn application with ``reuse_port`` (functions-framework 3.10.2).

functions-framework sets gunicorn's options itself (it reads only ``WORKERS``, ``THREADS`` and a
few more from the environment) in its private ``functions_framework._http.gunicorn``
``GunicornApplication.__init__``. :func:`install_reuse_port` replaces that class, in that
module, by a subclass whose ``load_config`` also sets gunicorn's ``reuse_port``. It must run
before functions-framework builds its server (``_http.HTTPServer.__init__`` imports the class
from that module then).
"""

from __future__ import annotations

FUNCTIONS_FRAMEWORK_VERSION = "3.10.2"  # the functions-framework this patch was checked against


def install_reuse_port() -> bool:
    """Swap in the ``reuse_port`` application; False when functions-framework serves without gunicorn."""
    try:
        from functions_framework._http import gunicorn as ff_gunicorn
    except ImportError:  # no gunicorn (e.g. Windows): functions-framework uses Flask's server
        return False
    base = ff_gunicorn.GunicornApplication
    if getattr(base, "reuse_port", False):
        return True

    class ReusePortApplication(base):  # type: ignore[misc, valid-type]
        """functions-framework's gunicorn application, with one listening socket per worker."""

        reuse_port = True

        def load_config(self) -> None:
            super().load_config()
            self.cfg.set("reuse_port", True)

    ff_gunicorn.GunicornApplication = ReusePortApplication
    return True
