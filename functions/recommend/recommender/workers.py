"""How functions-framework's gunicorn spreads connections over its ``WORKERS`` processes.

functions-framework serves an HTTP function with gunicorn's threaded workers, and gunicorn's
workers normally share one listening socket: whichever worker is waiting in ``epoll`` when a
connection arrives accepts it, and keeps it for as long as the client keeps it alive. A client
that opens its connections in a burst (``wrk``, a load balancer's connection pool) can hand all
of them to one worker while the other sits idle. Measured (``make bench-serving``'s 16 keep-alive
connections, WORKERS=2 THREADS=4, 5-second runs): in 2 of 4 runs one recommend worker used
5.4 s of CPU and the other 0.02 s, and the instance served 380-400 requests/s instead of ~900.

With gunicorn's ``reuse_port`` every worker binds its own ``SO_REUSEPORT`` socket after the
fork, and the kernel spreads new connections over them by hash. functions-framework sets
gunicorn's options itself (it reads only ``WORKERS``, ``THREADS`` and a few more from the
environment), so :func:`spread_connections` swaps in a subclass of its gunicorn application
that also sets ``reuse_port`` (the private-API part: ``compat/gunicorn_reuse_port.py``). It must
run before functions-framework builds its server, i.e. when ``main.py`` is imported.
``REUSE_PORT=0`` turns it off.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from httpfn.settings import ConfigError

from .compat.gunicorn_reuse_port import install_reuse_port

_OFF, _ON = ("0", "false", "no", "off"), ("", "1", "true", "yes", "on")


def reuse_port_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """``REUSE_PORT`` (default on) and the platform supports ``SO_REUSEPORT``."""
    raw = environ.get("REUSE_PORT", "")
    value = raw.strip().lower()
    if value not in _OFF + _ON:
        raise ConfigError(f"REUSE_PORT={raw!r} must be 1 or 0")
    return value in _ON and hasattr(socket, "SO_REUSEPORT")


def spread_connections(environ: Mapping[str, str] = os.environ) -> bool:
    """Give every gunicorn worker its own ``SO_REUSEPORT`` socket; True when in effect."""
    if not reuse_port_wanted(environ):
        return False
    return install_reuse_port()
