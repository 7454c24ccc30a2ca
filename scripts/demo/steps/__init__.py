"""The demo's steps, one module each, in the order ``scripts.demo.run`` calls them.

Each step takes the shared ``Context`` and what earlier steps returned, nothing else.
"""
