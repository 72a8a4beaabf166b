"""Where the file server keeps bytes: uploaded cache files, JEDI logs, HPO checkpoints.

:func:`file_store` gives the configured store; the interface is :class:`FileStore`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from bamboo.config import Settings
from bamboo.storage.base import (
    AlreadyExists,
    FileStore,
    OpenedFile,
    StorageError,
    StoredFile,
    TooLarge,
    UnsafeName,
    check_name,
    check_segment,
)
from bamboo.storage.local import LocalFileStore

__all__ = [
    "AlreadyExists",
    "FileStore",
    "LocalFileStore",
    "OpenedFile",
    "StorageError",
    "StoredFile",
    "TooLarge",
    "UnsafeName",
    "check_name",
    "check_segment",
    "file_store",
]


def file_store(settings: Settings) -> FileStore:
    """The store of the configured cache directory (one object per directory)."""
    return _local_store(settings.effective_cache_dir)


@cache
def _local_store(root: Path) -> LocalFileStore:
    return LocalFileStore(root)
