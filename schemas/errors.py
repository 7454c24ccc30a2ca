"""Validation errors shared by every contract."""

from __future__ import annotations


class InvalidRecord(ValueError):
    """A record that breaks its contract.

    Attributes:
        field: the offending field (dotted path), or ``"payload"`` for the whole record.
        reason: what was wrong, precise enough to fix the producer.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason, "error": str(self)}
