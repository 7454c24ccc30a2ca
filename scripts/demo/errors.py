"""The demo's one exception type.

Steps raise it with a message saying which step failed and why; ``__main__`` prints it.
"""

from __future__ import annotations


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""
