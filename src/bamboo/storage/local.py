"""The file store in a local directory (default ``<home>/cache``).

A write goes to a hidden temporary file in the target's own directory, is flushed to disk, and is
then renamed (or, when it must not replace anything, hard-linked) into place: a crash leaves at most
a ``.tmp-*`` file, which the cleaner removes, never a half-written file under a real name. The
blocking file operations run in worker threads so a large upload does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import stat
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from bamboo.storage.base import AlreadyExists, StoredFile, TooLarge, check_name

TEMPORARY_PREFIX = ".tmp-"
COPY_CHUNK_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 256 * 1024


def _info(name: str, status: os.stat_result) -> StoredFile:
    return StoredFile(name, status.st_size, datetime.fromtimestamp(status.st_mtime, UTC))


class LocalOpenedFile:
    """A file descriptor of a stored file; its bytes stay readable even if the name is replaced."""

    def __init__(self, fd: int, info: StoredFile) -> None:
        self._fd = fd
        self.info = info

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        position = start
        while position < end:
            size = min(READ_CHUNK_BYTES, end - position)
            piece = await asyncio.to_thread(os.pread, self._fd, size, position)
            if not piece:
                return
            position += len(piece)
            yield piece

    async def close(self) -> None:
        os.close(self._fd)


class LocalFileStore:
    """A :class:`~bamboo.storage.base.FileStore` in the directory ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    async def write(self, name: str, source: BinaryIO, *, max_bytes: int, replace: bool) -> StoredFile:
        path = self._path(name)
        return await asyncio.to_thread(self._write, name, path, source, max_bytes, replace)

    def _write(self, name: str, path: Path, source: BinaryIO, max_bytes: int, replace: bool) -> StoredFile:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            size = 0
            try:
                while chunk := source.read(COPY_CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(size, max_bytes)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(temporary, path)
            else:
                try:
                    # link() fails on an existing name: the check and the write are one step.
                    os.link(temporary, path, follow_symlinks=False)
                except FileExistsError as exc:
                    raise AlreadyExists(f"{name} exists") from exc
            _sync_directory(path.parent)
            return _info(name, path.stat())
        finally:
            temporary.unlink(missing_ok=True)

    async def append(self, name: str, source: BinaryIO, *, max_total_bytes: int) -> StoredFile:
        path = self._path(name)
        return await asyncio.to_thread(self._append, name, path, source, max_total_bytes)

    def _append(self, name: str, path: Path, source: BinaryIO, max_total_bytes: int) -> StoredFile:
        start = source.tell()
        addition = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            # One appender at a time per file, so the size check and the write agree.
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = os.fstat(fd).st_size
            if current + addition > max_total_bytes:
                raise TooLarge(current + addition, max_total_bytes)
            while chunk := source.read(COPY_CHUNK_BYTES):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
            return _info(name, os.fstat(fd))
        finally:
            os.close(fd)

    async def read(self, name: str, *, offset: int, max_bytes: int) -> bytes | None:
        opened = await self.open(name)
        if opened is None:
            return None
        try:
            end = min(opened.info.size, offset + max_bytes)
            return b"".join([piece async for piece in opened.chunks(offset, end)])
        finally:
            await opened.close()

    async def open(self, name: str) -> LocalOpenedFile | None:
        path = self._path(name)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # A symbolic link (ELOOP) or a directory part that is a file (ENOTDIR) is no stored file.
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                return None
            raise
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            os.close(fd)
            return None
        return LocalOpenedFile(fd, _info(name, status))

    async def stat(self, name: str) -> StoredFile | None:
        opened = await self.open(name)
        if opened is None:
            return None
        await opened.close()
        return opened.info

    async def touch(self, name: str, at: datetime | None = None) -> bool:
        path = self._path(name)
        if await self.stat(name) is None:
            return False
        stamp = (at or datetime.now(UTC)).timestamp()
        try:
            os.utime(path, (stamp, stamp), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    async def delete(self, name: str) -> bool:
        path = self._path(name)
        if await self.stat(name) is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    async def entries(self) -> list[StoredFile]:
        return await asyncio.to_thread(self._entries, TEMPORARY_PREFIX, False)

    async def remove_stale_temporaries(self, older_than: datetime) -> int:
        stale = [
            entry
            for entry in await asyncio.to_thread(self._entries, TEMPORARY_PREFIX, True)
            if entry.modified < older_than
        ]
        for entry in stale:
            (self.root / entry.name).unlink(missing_ok=True)
        return len(stale)

    def _entries(self, prefix: str, temporaries: bool) -> list[StoredFile]:
        """Regular files of the root and its subdirectories: the temporaries, or all others."""
        found: list[StoredFile] = []
        directories: list[tuple[Path, str]] = [(self.root, "")]
        while directories:
            directory, prefix_name = directories.pop()
            try:
                listing = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for item in listing:
                name = prefix_name + item.name
                if item.is_dir(follow_symlinks=False):
                    if not prefix_name and not item.name.startswith("."):
                        directories.append((Path(item.path), name + "/"))
                    continue
                if not item.is_file(follow_symlinks=False):
                    continue
                if item.name.startswith(prefix) != temporaries:
                    continue
                if not temporaries and item.name.startswith("."):
                    continue
                try:
                    found.append(_info(name, item.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue
        return sorted(found, key=lambda entry: entry.name)


def _sync_directory(directory: Path) -> None:
    """Make a rename or link durable: without this a crash may forget the new name."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
