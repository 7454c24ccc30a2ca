"""In-memory stand-ins for the recommend function's Firestore store, for tests without an emulator."""

from __future__ import annotations


class EmptyStore:
    """A store with nothing in it: no users, no model pointer, no trending list, no new items."""

    def get_user(self, user_id: str) -> None:
        return None

    def get_current_model(self) -> None:
        return None

    def get_trending(self) -> None:
        return None

    def items_since(self, indexed_from: int, limit: int) -> list:
        return []
