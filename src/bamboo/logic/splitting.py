"""Turning a task's input files into jobs (domain.md §4.2 and the sizing keys of §1.4).

Two steps, both pure:

* :func:`cut_events` cuts files into event ranges of a fixed size when a task splits by events
  (done once, when the input rows are created);
* :func:`group_rows` partitions the resulting input rows (whole files or event ranges) into the
  ordered groups that become jobs, following a :class:`SplitRule`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bamboo.logic.errors import InvalidInput

GIB = 1024**3

#: Files per job when nothing else limits it (the splitter's default ``maxNumFiles``).
DEFAULT_MAX_FILES_PER_JOB = 200

#: Input bytes per job when neither the task nor the queue gives a limit.
DEFAULT_MAX_SIZE_PER_JOB = 20 * GIB

#: Unmerged files per merge job, and their bytes, when the task gives no limit (domain.md §4.2).
DEFAULT_MAX_FILES_PER_MERGE_JOB = 50
DEFAULT_MAX_SIZE_PER_MERGE_JOB = 5 * GIB


@dataclass(frozen=True)
class SplitRule:
    """How many input rows go into one job.

    At most one of ``n_events_per_job``, ``n_files_per_job`` and ``n_gb_per_job`` is set by
    :meth:`from_params`; :func:`group_rows` looks at them in that order.

    ``seconds_per_event`` (the task's cpuTime) and ``max_walltime`` (the queue's maxtime) size
    jobs by walltime: when both are set, a size-based job also closes before its estimated
    walltime, events times seconds per event, would pass the queue's limit (domain.md §4.2).
    The generator fills ``max_walltime`` once the queue is known.
    """

    n_files_per_job: int | None = None
    n_events_per_job: int | None = None
    n_gb_per_job: float | None = None
    n_max_files_per_job: int = DEFAULT_MAX_FILES_PER_JOB
    max_size_per_job: int = DEFAULT_MAX_SIZE_PER_JOB
    seconds_per_event: float | None = None
    max_walltime: int | None = None

    def __post_init__(self) -> None:
        # A zero or negative size would make group_rows loop or emit empty jobs.
        for name in (
            "n_files_per_job",
            "n_events_per_job",
            "n_gb_per_job",
            "seconds_per_event",
            "max_walltime",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.n_max_files_per_job < 1 or self.max_size_per_job < 1:
            raise ValueError("n_max_files_per_job and max_size_per_job must be positive")

    def size_tags(self) -> dict[str, str | None]:
        """The sizes as the task's ``splitRule`` tags (``NE``, ``NF``, ``NG``, ``MF``); None where unset."""
        sizes = {
            "NE": self.n_events_per_job,
            "NF": self.n_files_per_job,
            "NG": self.n_gb_per_job,
            "MF": self.n_max_files_per_job,
        }
        return {
            tag: None if value is None else f"{value:g}" if isinstance(value, float) else str(value)
            for tag, value in sizes.items()
        }

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

    @classmethod
    def for_merges(cls, params: Mapping[str, Any]) -> SplitRule:
        """The rule grouping pre-merge jobs' files into merge jobs: nFilesPerMergeJob, else
        nGBPerMergeJob, within nMaxFilesPerMergeJob (50) files and 5 GB."""
        max_files = params.get("nMaxFilesPerMergeJob") or DEFAULT_MAX_FILES_PER_MERGE_JOB
        n_files = params.get("nFilesPerMergeJob")
        if n_files is not None:
            return cls(n_files_per_job=n_files, n_max_files_per_job=max_files)
        n_gb = params.get("nGBPerMergeJob")
        return cls(
            n_gb_per_job=None if n_gb in (None, "MAX") else float(n_gb),
            n_max_files_per_job=max_files,
            max_size_per_job=DEFAULT_MAX_SIZE_PER_MERGE_JOB,
        )

    def for_queue(self, queue: Mapping[str, Any], seconds_per_event: float | None) -> SplitRule:
        """The rule at a queue: its ``maxtime`` bounds walltime, its ``maxwdir`` (MB) the input size.

        ``maxwdir`` replaces the 20 GB default only; the task's nGBPerJob still wins (domain.md §4.2).

        Args:
            queue: the queue spec brokerage chose.
            seconds_per_event: the task's cpuTime, None when unknown.
        """
        rule = self.with_walltime(seconds_per_event, queue.get("maxtime"))
        work_dir = queue.get("maxwdir")
        if work_dir and work_dir > 0:
            rule = replace(rule, max_size_per_job=int(work_dir) * 1024**2)
        return rule

    def with_walltime(self, seconds_per_event: float | None, max_walltime: int | None) -> SplitRule:
        """The rule with walltime sizing for a queue; unknown or non-positive values switch it off.

        Args:
            seconds_per_event: the task's cpuTime (seconds per event, from the task or its scouts).
            max_walltime: the queue's maxtime in seconds.
        """
        if not seconds_per_event or seconds_per_event <= 0 or not max_walltime or max_walltime <= 0:
            return replace(self, seconds_per_event=None, max_walltime=None)
        return replace(self, seconds_per_event=float(seconds_per_event), max_walltime=int(max_walltime))


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
      within the limit, the count within ``n_max_files_per_job`` and, with walltime sizing, the
      estimated walltime within ``max_walltime`` (rows without an event count add none); a row
      over a limit on its own still forms a job.

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
    max_events = None
    if rule.seconds_per_event is not None and rule.max_walltime is not None:
        max_events = rule.max_walltime / rule.seconds_per_event
    return _group_by_size(rows, limit, rule.n_max_files_per_job, max_events)


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


def _group_by_size(
    rows: Sequence[Row], max_bytes: int, max_files: int, max_events: float | None
) -> list[list[Row]]:
    groups: list[list[Row]] = []
    current: list[Row] = []
    total = 0
    events = 0
    for row in rows:
        row_events = row.n_events or 0
        too_long = max_events is not None and events + row_events > max_events
        if current and (total + row.size > max_bytes or len(current) >= max_files or too_long):
            groups.append(current)
            current, total, events = [], 0, 0
        current.append(row)
        total += row.size
        events += row_events
    if current:
        groups.append(current)
    return groups
