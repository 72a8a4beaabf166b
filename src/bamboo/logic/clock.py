"""Time as a dependency, so agents and timeouts can be tested without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real UTC wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def days_before(moment: datetime, days: int) -> datetime:
    """``moment`` minus ``days`` days, saturating at the first and last instants a datetime holds.

    Query windows come from clients' day counts; one reaching past year 1 or 9999 means "since
    ever" (or "until ever"), not an error.
    """
    if days >= 0:
        limit = (moment - _EARLIEST).days
        return _EARLIEST if days > limit else moment - timedelta(days=days)
    limit = (_LATEST - moment).days
    return _LATEST if -days > limit else moment - timedelta(days=days)
