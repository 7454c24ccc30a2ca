"""Compatibility modules: every reach into a dependency's private API, one module each.

Each names the version it was written against; ``tests/unit/test_functions_compat.py`` pins
those versions and checks the private names still exist, so an upgrade fails loudly there.
"""
