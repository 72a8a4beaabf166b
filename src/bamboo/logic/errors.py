"""Domain errors. Logic raises these; the API maps them to a failed envelope in one place."""

from __future__ import annotations

from typing import Any


class BambooError(Exception):
    """A request that cannot be done; answered as ``{"success": false, "message": ..., "data": ...}``."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidInput(BambooError):
    """The caller sent something that breaks a rule; the message names the offending item."""


class NotFound(BambooError):
    """The named object does not exist."""
