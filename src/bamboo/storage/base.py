"""The file store interface: what the file server needs from wherever the bytes live.

Names are relative, ``/``-separated, at most two segments (``sources.<uuid>.tar.gz``,
``jedilog/<task>.log``), each a safe file name (:func:`check_segment`). Every backend must make a
write all-or-nothing: a reader sees the old bytes or the new ones, never a part. A local directory
(:mod:`bamboo.storage.local`) is the one backend today; an object store can implement the same
methods.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

#: Longest file name segment: what common file systems and object stores allow.
MAX_SEGMENT_BYTES = 255
MAX_SEGMENTS = 2
# Letters, digits and the punctuation PanDA file names use; no spaces, quotes, shell or URL
# specials. A name may not start with a dot: those are hidden files and the store's own temporaries.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_+=,@~-][A-Za-z0-9._+=,@~-]*")


class StorageError(Exception):
    """A store operation that cannot be done; the message says why in client-facing words."""


class UnsafeName(StorageError):
    """A name that could escape the store or hide in it (traversal, control characters, dots)."""


class TooLarge(StorageError):
    """The bytes passed the size bound; nothing was stored."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes > {limit} bytes")
        self.size = size
        self.limit = limit


class AlreadyExists(StorageError):
    """A write without ``replace`` found the name taken; the existing file was left as it was."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file in the store: its name, size in bytes and last modification (UTC)."""

    name: str
    size: int
    modified: datetime


class OpenedFile(Protocol):
    """A file opened for reading: its state as opened, and its bytes by range."""

    info: StoredFile

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes ``start`` (inclusive) to ``end`` (exclusive), in pieces."""
        ...

    async def close(self) -> None: ...


class FileStore(Protocol):
    """Where the file server keeps bytes."""

    async def write(self, name: str, source: BinaryIO, *, max_bytes: int, replace: bool) -> StoredFile:
        """Store everything ``source`` holds from its current position under ``name``.

        Raises:
            TooLarge: ``source`` holds more than ``max_bytes``.
            AlreadyExists: ``name`` exists and ``replace`` is false.
        """
        ...

    async def append(self, name: str, source: BinaryIO, *, max_total_bytes: int) -> StoredFile:
        """Add what ``source`` holds from its current position at the end of ``name`` (created when
        missing). Unlike a write it is not all-or-nothing: a crash may leave part of the addition.

        Raises:
            TooLarge: the file would pass ``max_total_bytes``.
        """
        ...

    async def read(self, name: str, *, offset: int, max_bytes: int) -> bytes | None:
        """At most ``max_bytes`` from ``offset`` on; None when there is no such file."""
        ...

    async def open(self, name: str) -> OpenedFile | None:
        """The file for ranged reads, or None when there is no such file."""
        ...

    async def stat(self, name: str) -> StoredFile | None: ...

    async def touch(self, name: str, at: datetime | None = None) -> bool:
        """Set the modification time to ``at`` (default now); False when there is no such file."""
        ...

    async def delete(self, name: str) -> bool:
        """Remove the file; False when there was none."""
        ...

    async def entries(self) -> list[StoredFile]:
        """Every stored file with its modification time (the cleaner's listing)."""
        ...

    async def remove_stale_temporaries(self, older_than: datetime) -> int:
        """Delete what interrupted writes left behind before ``older_than``; how many."""
        ...


def check_segment(segment: str) -> str:
    """``segment`` if it is a safe single file name, else :class:`UnsafeName` saying what is wrong."""
    if not segment:
        raise UnsafeName("empty file name")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in segment):
        raise UnsafeName("file name with control characters")
    if segment in (".", ".."):
        raise UnsafeName(f"file name {segment!r} is not a file")
    if "/" in segment or "\\" in segment:
        raise UnsafeName("file name with a directory part")
    if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        raise UnsafeName(f"file name longer than {MAX_SEGMENT_BYTES} bytes")
    if segment.startswith("."):
        raise UnsafeName("file name starting with a dot")
    if not _SAFE_SEGMENT.fullmatch(segment):
        raise UnsafeName("file name with characters other than letters, digits and ._+=,@~-")
    return segment


def check_name(name: str) -> str:
    """``name`` if it is a safe store name (one or two safe segments), else :class:`UnsafeName`."""
    segments = name.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise UnsafeName("file name with too many directory parts")
    for segment in segments:
        check_segment(segment)
    return name
