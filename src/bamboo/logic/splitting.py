"""Turning a task's input files into jobs (domain.md §4.2 and the sizing keys of §1.4).

Two steps, both pure:

* :func:`cut_events` cuts files into event ranges of a fixed size when a task splits by events
  (done once, when the input rows are created);
* :func:`group_rows` partitions the resulting input rows (whole files or event ranges) into the
  ordered groups that become jobs, following a :class:`SplitRule`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bamboo.logic.errors import InvalidInput

GIB = 1024**3

#: Files per job when nothing else limits it (the splitter's default ``maxNumFiles``).
DEFAULT_MAX_FILES_PER_JOB = 200

#: Input bytes per job when neither the task nor the queue gives a limit.
DEFAULT_MAX_SIZE_PER_JOB = 20 * GIB


@dataclass(frozen=True)
class SplitRule:
    """How many input rows go into one job.

    At most one of ``n_events_per_job``, ``n_files_per_job`` and ``n_gb_per_job`` is set by
    :meth:`from_params`; :func:`group_rows` looks at them in that order.
    """

    n_files_per_job: int | None = None
    n_events_per_job: int | None = None
    n_gb_per_job: float | None = None
    n_max_files_per_job: int = DEFAULT_MAX_FILES_PER_JOB
    max_size_per_job: int = DEFAULT_MAX_SIZE_PER_JOB

    def __post_init__(self) -> None:
        # A zero or negative size would make group_rows loop or emit empty jobs.
        for name in ("n_files_per_job", "n_events_per_job", "n_gb_per_job"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.n_max_files_per_job < 1 or self.max_size_per_job < 1:
            raise ValueError("n_max_files_per_job and max_size_per_job must be positive")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], n_events_per_file: int | None) -> SplitRule:
        """Build the rule from task parameters that passed ``taskparams.validate``.

        Priority is nEventsPerJob > nFilesPerJob > nGBPerJob: a higher key makes the lower ones
        ignored. When nEventsPerJob is at least the (known) number of events per input file, the
        task is split by whole files instead, ``nEventsPerJob // nEventsPerFile`` per job, as
        the upstream ContentsFeeder does.

        Args:
            params: the task-parameter dict; only the sizing keys are read.
            n_events_per_file: events in each input file, ``None`` when unknown.

        Returns:
            The split rule.
        """
        max_files = params.get("nMaxFilesPerJob") or DEFAULT_MAX_FILES_PER_JOB
        n_events = params.get("nEventsPerJob")
        if n_events is not None:
            if n_events_per_file and n_events >= n_events_per_file:
                return cls(n_files_per_job=n_events // n_events_per_file, n_max_files_per_job=max_files)
            return cls(n_events_per_job=n_events, n_max_files_per_job=max_files)
        n_files = params.get("nFilesPerJob")
        if n_files is not None:
            return cls(n_files_per_job=n_files, n_max_files_per_job=max_files)
        n_gb = params.get("nGBPerJob")
        # "MAX" is what prun sends when the user gave no limit.
        if n_gb is None or n_gb == "MAX":
            return cls(n_max_files_per_job=max_files)
        return cls(n_gb_per_job=float(n_gb), n_max_files_per_job=max_files)


@dataclass(frozen=True)
class FileInfo:
    """An input file as :func:`cut_events` needs it."""

    lfn: str
    size: int
    n_events: int | None


@dataclass(frozen=True)
class Segment:
    """An event range of one file: events ``start_event..end_event`` (0-based, inclusive)."""

    file_index: int
    start_event: int
    end_event: int
    first_event: int

    @property
    def n_events(self) -> int:
        """Number of events in the range."""
        return self.end_event - self.start_event + 1


def cut_events(files: Sequence[FileInfo], n_events_per_job: int, *, first_event: int = 1) -> list[Segment]:
    """Cut files into event ranges so that every ``n_events_per_job`` events form one job.

    Chunks run across the files in order. A chunk that does not fit in the rest of a file
    continues in the next file, giving one segment per file it touches; :func:`group_rows`
    puts those segments back together.

    Args:
        files: the input files in processing order; each needs a positive ``n_events``.
        n_events_per_job: events per job.
        first_event: global number given to the very first event (1 + the task's FT offset).

    Returns:
        The segments in order; together they cover every event of every file exactly once.

    Raises:
        InvalidInput: ``n_events_per_job`` is not positive or a file has no event count.
    """
    if n_events_per_job < 1:
        raise InvalidInput(
            f"task parameter 'nEventsPerJob' must be a positive integer, got {n_events_per_job}"
        )
    segments: list[Segment] = []
    left_in_chunk = n_events_per_job
    next_event = first_event
    for index, info in enumerate(files):
        if info.n_events is None or info.n_events <= 0:
            raise InvalidInput(
                f"input file '{info.lfn}' has no known number of events, which splitting by events needs"
            )
        start = 0
        while start < info.n_events:
            take = min(left_in_chunk, info.n_events - start)
            segments.append(Segment(index, start, start + take - 1, next_event))
            start += take
            next_event += take
            left_in_chunk -= take
            if left_in_chunk == 0:
                left_in_chunk = n_events_per_job
    return segments


@dataclass(frozen=True)
class Row:
    """An input row to be grouped: a whole file or an event range of one."""

    key: Any
    size: int
    n_events: int | None


def group_rows(rows: Sequence[Row], rule: SplitRule) -> list[list[Row]]:
    """Partition rows, in order, into the groups that become jobs.

    * ``n_events_per_job``: rows are added until their events reach the target. Rows made by
      :func:`cut_events` therefore regroup into exactly its chunks.
    * ``n_files_per_job``: consecutive groups of that many rows (the last may be smaller);
      the file cap does not apply because the user asked for an exact count.
    * ``n_gb_per_job``, or else ``max_size_per_job``: rows are added while the total size stays
      within the limit and the count within ``n_max_files_per_job``; a row larger than the limit
      still forms a job on its own.

    Args:
        rows: the rows in processing order.
        rule: the task's split rule.

    Returns:
        Non-empty groups; every row is in exactly one, and concatenating them gives ``rows``.

    Raises:
        InvalidInput: splitting by events and a row has no event count.
    """
    if rule.n_events_per_job is not None:
        return _group_by_events(rows, rule.n_events_per_job)
    if rule.n_files_per_job is not None:
        step = rule.n_files_per_job
        return [list(rows[i : i + step]) for i in range(0, len(rows), step)]
    limit = int(rule.n_gb_per_job * GIB) if rule.n_gb_per_job is not None else rule.max_size_per_job
    return _group_by_size(rows, limit, rule.n_max_files_per_job)


def _group_by_events(rows: Sequence[Row], n_events_per_job: int) -> list[list[Row]]:
    groups: list[list[Row]] = []
    current: list[Row] = []
    total = 0
    for row in rows:
        if row.n_events is None:
            raise InvalidInput(f"input row {row.key!r} has no event count, which splitting by events needs")
        current.append(row)
        total += row.n_events
        if total >= n_events_per_job:
            groups.append(current)
            current, total = [], 0
    if current:
        groups.append(current)
    return groups


def _group_by_size(rows: Sequence[Row], max_bytes: int, max_files: int) -> list[list[Row]]:
    groups: list[list[Row]] = []
    current: list[Row] = []
    total = 0
    for row in rows:
        if current and (total + row.size > max_bytes or len(current) >= max_files):
            groups.append(current)
            current, total = [], 0
        current.append(row)
        total += row.size
    if current:
        groups.append(current)
    return groups
