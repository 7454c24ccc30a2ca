"""Moved to :mod:`bench.quality` (``python -m bench.quality``); this entry point only forwards to it
until ``scripts.demo`` runs the new module."""

import sys

from bench.quality import main

if __name__ == "__main__":
    sys.exit(main())
