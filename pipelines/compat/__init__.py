"""Named shims over private APIs of pinned dependencies, each pinned by a contract test."""
