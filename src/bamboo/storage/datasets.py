"""Bamboo's local storage element: the bytes of dataset files on this machine.

Layout: ``<storage_dir>/<scope>/<lfn>`` (``storage_dir`` defaults to ``<home>/storage``). A file's
identity in the catalog is its scope and LFN, as a Rucio DID, and one file may belong to several
datasets (an input dataset and a container of it, the outputs of a job and their container), so
its path names the scope and the file, not a dataset. `bamboo data upload` writes here and
registers the files, the built-in worker (``bamboo.worker``) stages inputs from here and outputs
and log tarballs to here, and `bamboo data get` copies a dataset's files out by the catalog's
list. Both path parts are checked as single safe file names (:func:`bamboo.storage.check_segment`),
so a scope or LFN cannot leave the directory.

A write is all-or-nothing: the bytes go to a temporary file in the target's directory, are
synced, then renamed over the target, so a reader never sees a partial file.
"""

from __future__ import annotations

import os
import shutil
import uuid
import zlib
from pathlib import Path

from bamboo.storage.base import check_segment

_CHUNK = 1024 * 1024


class DataStorage:
    """Dataset files under one directory, by scope and LFN."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, scope: str, lfn: str) -> Path:
        """Where the file ``scope:lfn`` lives (whether or not it exists).

        Raises:
            bamboo.storage.UnsafeName: the scope or the LFN is not a safe file name.
        """
        return self.root / check_segment(scope) / check_segment(lfn)

    def put(self, source: Path, scope: str, lfn: str) -> Path:
        """Copy ``source`` in as ``scope:lfn`` (replacing an older copy); returns the stored path."""
        target = self.path(scope, lfn)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        temporary = target.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with source.open("rb") as reader, temporary.open("xb") as writer:
                shutil.copyfileobj(reader, writer, _CHUNK)
                writer.flush()
                os.fsync(writer.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        return target


def adler32_of(path: Path) -> str:
    """The file's Adler-32 checksum as Rucio writes it: eight lower-case hex digits."""
    value = 1
    with path.open("rb") as reader:
        while chunk := reader.read(_CHUNK):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"
