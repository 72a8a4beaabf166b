"""The file server's rules (api-v1.md §2.6, domain.md §9.1): the user file cache, JEDI logs and HPO
checkpoints, and the cleaner that expires them.

Bytes live in a :class:`~bamboo.storage.FileStore`; the registry of uploaded cache files (who owns
which sandbox, with its size and checksum) is the ``cache_files`` table. Failures are raised as
:class:`~bamboo.logic.errors.BambooError` with upstream's messages.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, BinaryIO

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.config import Settings
from bamboo.db import files as files_db
from bamboo.logic import commands
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError
from bamboo.storage import AlreadyExists, FileStore, StoredFile, TooLarge, UnsafeName, check_segment

log = logging.getLogger(__name__)

MB = 1024 * 1024
#: Upload limits by kind (api-v1.md §2.6), in bytes.
JEDI_LOG_LIMIT = 100 * MB
CACHE_LOG_LIMIT = 100 * MB  # cache files named *.out
SOURCES_LIMIT = 768 * MB  # sandboxes, named sources.*
NO_BUILD_LIMIT = 10 * MB  # any other name ("no build" uploads)
HPO_CHECKPOINT_LIMIT = 500 * MB
#: The largest upload any file server endpoint takes: the endpoints' body limits derive from it.
LARGEST_UPLOAD = SOURCES_LIMIT
#: Room for the multipart framing around the file in a request body.
MULTIPART_OVERHEAD = 64 * 1024
#: How long a registered sandbox can be reused instead of uploaded again.
REUSE_WINDOW = timedelta(days=3)

JEDI_LOG_AREA = "jedilog"
HPO_PREFIX = "hpo_cp_"
OVERWRITE_SUFFIX = ".__ow__"
_HPO_FILENAME = re.compile(r"([0-9]{1,20})_([0-9]{1,20})")
_DECOMPRESS_CHUNK = 1024 * 1024
# The cleaner: files per batch, and how many old registry rows it compares with the files.
CLEAN_BATCH = 500
ORPHAN_SCAN = 10_000
# What an interrupted write left: surely dead after a day (no upload takes that long).
TEMPORARY_MAX_AGE = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of a multipart request, already spooled to disk.

    Attributes:
        filename: the file name the client sent (panda-client's native transport sends its full
            local path).
        stream: the bytes, seekable, positioned at the start.
        size: how many bytes arrived.
        declared_length: the request's Content-Length, when it had one (checked first, as upstream).
    """

    filename: str
    stream: BinaryIO
    size: int
    declared_length: int | None


@dataclass(frozen=True, slots=True)
class Uploader:
    """Who uploads a cache file: compact user name, production role, and the cache host it used."""

    user_name: str
    production: bool
    host: str


def client_file_name(filename: str) -> str:
    """The safe base name of a client's file name, or a failure saying what is wrong with it."""
    base = re.split(r"[/\\]", filename)[-1]
    try:
        return check_segment(base)
    except UnsafeName as exc:
        raise BambooError(f"ERROR: invalid file name: {exc}") from exc


def cache_file_limit(name: str) -> tuple[int, str]:
    """The size limit of a cache file by its name, and the advice its refusal gives."""
    if name.endswith(".out"):
        return CACHE_LOG_LIMIT, " Please remove redundant files from your work area"
    if name.startswith("sources."):
        return SOURCES_LIMIT, " Please remove redundant files from your work area"
    return (
        NO_BUILD_LIMIT,
        " Please submit the job without --noBuild/--libDS since those options impose a tighter size limit",
    )


def gzip_checksum(stream: BinaryIO) -> str | None:
    """The CRC32 in a gzip file's footer as a decimal string (None for anything but gzip).

    panda-client compares it with the first little-endian uint32 of the file's last 8 bytes.
    """
    start = stream.tell()
    try:
        magic = stream.read(2)
        size = stream.seek(0, 2)
        if magic != b"\x1f\x8b" or size < 18:
            return None
        stream.seek(size - 8)
        return str(int.from_bytes(stream.read(4), "little"))
    finally:
        stream.seek(start)


def _sizes(upload: Upload) -> list[int]:
    # The declared length first, as upstream refuses on it; the counted bytes catch chunked bodies.
    return [size for size in (upload.declared_length, upload.size) if size is not None]


async def upload_cache_file(
    conn: AsyncConnection,
    store: FileStore,
    clock: Clock,
    uploader: Uploader,
    upload: Upload,
    *,
    quota_bytes: int,
) -> StoredFile:
    """Store a user's cache file (sandbox) and register it, refusing overwrites and oversize files."""
    name = client_file_name(upload.filename)
    limit, advice = cache_file_limit(name)
    for size in _sizes(upload):
        if size > limit:
            raise BambooError(
                f"ERROR: upload failure. Exceeded size limit {size // MB} MB > {limit // MB} MB.{advice}"
            )
    registered = not name.endswith(".out")
    replace = name.endswith(OVERWRITE_SUFFIX)
    owners = await files_db.owner_of(conn, name)
    if replace and owners and uploader.user_name not in owners:
        # The overwrite suffix lets a user refresh a persistent sandbox, not replace someone else's.
        raise BambooError("ERROR: cannot overwrite file")
    if registered and quota_bytes:
        used = await files_db.used_bytes(conn, uploader.user_name, excluding=name if replace else None)
        if used + upload.size > quota_bytes:
            raise BambooError(
                f"ERROR: upload failure. Exceeded the cache quota of {quota_bytes // MB} MB per user: "
                f"{used // MB} MB in use + {upload.size // MB} MB. Unused files expire, or delete "
                "them with delete_cache_file"
            )
    checksum = gzip_checksum(upload.stream)
    try:
        stored = await store.write(name, upload.stream, max_bytes=limit, replace=replace)
    except AlreadyExists as exc:
        await store.touch(name, clock.now())
        raise BambooError("ERROR: cannot overwrite file") from exc
    except TooLarge as exc:
        raise BambooError(
            f"ERROR: upload failure. Exceeded size limit {exc.size // MB} MB > {limit // MB} MB.{advice}"
        ) from exc
    except OSError as exc:
        log.error("cannot write cache file %s: %s", name, exc)
        raise BambooError("ERROR: cannot write file") from exc
    if registered:
        await files_db.replace(
            conn,
            {
                "host": uploader.host,
                "file_name": name,
                "user_name": uploader.user_name,
                "file_size": stored.size,
                "checksum": checksum,
                "creation_time": clock.now(),
            },
        )
    return stored


async def touch_cache_file(store: FileStore, clock: Clock, file_name: str) -> None:
    """Mark a cache file as used now, so the cleaner keeps it another full period."""
    try:
        name = check_segment(re.split(r"[/\\]", file_name)[-1])
    except UnsafeName as exc:
        raise BambooError(f"Failed to touch file with: ValueError {exc}") from exc
    if not await store.touch(name, clock.now()):
        raise BambooError(f"Failed to touch file with: FileNotFoundError no such file: {name}")


async def delete_cache_file(conn: AsyncConnection, store: FileStore, user_name: str, file_name: str) -> None:
    """Delete one of the caller's own registered cache files (and its registration)."""
    name = client_file_name(file_name)
    if not await files_db.delete_names(conn, [name], user_name=user_name):
        raise BambooError(f"ERROR: {name} is not a registered cache file of {user_name}")
    await store.delete(name)


async def register_cache_file(
    conn: AsyncConnection,
    clock: Clock,
    *,
    host: str,
    user_name: str,
    file_name: str,
    file_size: int,
    checksum: str,
) -> None:
    """Record a cache file uploaded by other means (production role)."""
    name = client_file_name(file_name)
    if file_size < 0:
        raise BambooError("ERROR: file_size must not be negative")
    if not user_name or len(user_name) > 256:
        raise BambooError("ERROR: user_name must be 1 to 256 characters")
    if len(checksum) > 32:
        raise BambooError("ERROR: checksum longer than 32 characters")
    row = {
        "host": host,
        "file_name": name,
        "user_name": user_name,
        "file_size": file_size,
        "checksum": checksum,
        "creation_time": clock.now(),
    }
    if not await files_db.insert(conn, row):
        raise BambooError("WARNING: file exist")


async def find_reusable_cache_file(
    conn: AsyncConnection, store: FileStore, clock: Clock, *, user_name: str, file_size: int, checksum: str
) -> str | None:
    """``FOUND:<host>:<name>`` for the caller's still stored file of that size and checksum
    registered within the reuse window, else None."""
    candidates = await files_db.find_reusable(
        conn, user_name=user_name, file_size=file_size, checksum=checksum, since=clock.now() - REUSE_WINDOW
    )
    for host, name in candidates:
        stored = await store.stat(name)
        # Only a file still here with those bytes: its name is what the client's jobs will fetch.
        if stored is not None and stored.size == file_size:
            return f"FOUND:{host}:{name}"
    return None


async def upload_jedi_log(store: FileStore, upload: Upload, base_url: str) -> str:
    """Store (replace) a JEDI log as ``jedilog/<name>``; its URL."""
    name = client_file_name(upload.filename)
    if any(size > JEDI_LOG_LIMIT for size in _sizes(upload)):
        raise BambooError("ERROR: upload failure. Exceeded size limit")
    try:
        await store.write(f"{JEDI_LOG_AREA}/{name}", upload.stream, max_bytes=JEDI_LOG_LIMIT, replace=True)
    except TooLarge as exc:
        raise BambooError("ERROR: upload failure. Exceeded size limit") from exc
    except OSError as exc:
        raise BambooError(f"failed to write log with {type(exc).__name__}:{exc}") from exc
    return f"{base_url}/cache/{JEDI_LOG_AREA}/{name}"


async def update_jedi_log(
    conn: AsyncConnection, store: FileStore, upload: Upload, *, temp_dir: Path
) -> StoredFile:
    """Append a zlib-compressed piece of a log to ``<name>`` in the cache.

    The piece is decompressed into a temporary file, never past what the log may still grow by,
    so a small zlib bomb is refused instead of filling memory or disk.
    """
    name = client_file_name(upload.filename)
    if name.startswith(HPO_PREFIX) or await files_db.owner_of(conn, name):
        raise BambooError(f"ERROR: cannot update file with {name}: not a log")
    if any(size > JEDI_LOG_LIMIT for size in _sizes(upload)):
        raise BambooError("ERROR: upload failure. Exceeded size limit")
    current = await store.stat(name)
    room = JEDI_LOG_LIMIT - (current.size if current else 0)
    try:
        plain = await asyncio.to_thread(_inflate_to_temporary, upload.stream, temp_dir, room)
    except zlib.error as exc:
        raise BambooError(f"ERROR: cannot update file with {type(exc)} {exc}") from exc
    try:
        return await store.append(name, plain, max_total_bytes=JEDI_LOG_LIMIT)
    except TooLarge as exc:
        raise BambooError("ERROR: upload failure. Exceeded size limit") from exc
    except OSError as exc:
        raise BambooError(f"ERROR: cannot update file with {type(exc)} {exc}") from exc
    finally:
        plain.close()


def _inflate_to_temporary(source: BinaryIO, temp_dir: Path, max_bytes: int) -> IO[bytes]:
    """The decompressed bytes in an unnamed temporary file, positioned at the start."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    plain = tempfile.TemporaryFile(dir=temp_dir)
    try:
        _inflate(source, plain, max_bytes)
    except BaseException:
        plain.close()
        raise
    plain.seek(0)
    return plain


def _inflate(source: BinaryIO, target: BinaryIO, max_bytes: int) -> None:
    """Decompress zlib data from ``source`` into ``target``, refusing more than ``max_bytes`` out."""
    decompressor = zlib.decompressobj()
    written = 0
    while True:
        chunk = source.read(_DECOMPRESS_CHUNK)
        data = decompressor.decompress(chunk, _DECOMPRESS_CHUNK) if chunk else decompressor.flush()
        while True:
            written += len(data)
            if written > max_bytes:
                raise BambooError("ERROR: upload failure. Exceeded size limit")
            target.write(data)
            pending = decompressor.unconsumed_tail
            if not pending:
                break
            data = decompressor.decompress(pending, _DECOMPRESS_CHUNK)
        if not chunk:
            break
    if not decompressor.eof:
        raise zlib.error("incomplete or truncated stream")


async def read_jedi_log(store: FileStore, log_name: str, offset: int) -> str | None:
    """A log's text from byte ``offset`` on, or None when it cannot be read (bad name, no file)."""
    try:
        name = check_segment(re.split(r"[/\\]", log_name)[-1])
    except UnsafeName:
        return None
    if offset < 0:
        return None
    data = await store.read(name, offset=offset, max_bytes=JEDI_LOG_LIMIT)
    return None if data is None else data.decode("utf-8", "replace")


async def _check_task_access(conn: AsyncConnection, task_id: int, user_name: str, production: bool) -> None:
    if not production and await commands.task_owner(conn, task_id) != user_name:
        raise BambooError("not the task owner or no production role")


def hpo_checkpoint_name(task_id: int, sub_id: int) -> str:
    return f"{HPO_PREFIX}{task_id}_{sub_id}"


async def upload_hpo_checkpoint(
    conn: AsyncConnection, store: FileStore, uploader: Uploader, upload: Upload
) -> str:
    """Store (replace) the checkpoint of one HPO point of a task; the path it is served under."""
    match = _HPO_FILENAME.fullmatch(re.split(r"[/\\]", upload.filename)[-1])
    if match is None:
        raise BambooError("Failed to extract task and sub IDs")
    task_id, sub_id = int(match.group(1)), int(match.group(2))
    if upload.declared_length is None:
        raise BambooError("Cannot get content-length")
    for size in _sizes(upload):
        if size > HPO_CHECKPOINT_LIMIT:
            raise BambooError(f"Exceeded size limit {size}>{HPO_CHECKPOINT_LIMIT}")
    await _check_task_access(conn, task_id, uploader.user_name, uploader.production)
    name = hpo_checkpoint_name(task_id, sub_id)
    try:
        await store.write(name, upload.stream, max_bytes=HPO_CHECKPOINT_LIMIT, replace=True)
    except TooLarge as exc:
        raise BambooError(f"Exceeded size limit {exc.size}>{HPO_CHECKPOINT_LIMIT}") from exc
    except OSError as exc:
        raise BambooError(f"Cannot write file due to {exc}") from exc
    return f"/cache/{name}"


async def delete_hpo_checkpoint(
    conn: AsyncConnection, store: FileStore, uploader: Uploader, task_id: str, sub_id: str
) -> None:
    """Delete the checkpoint of one HPO point of a task."""
    if not (_HPO_FILENAME.fullmatch(f"{task_id}_{sub_id}")):
        raise BambooError("Failed to delete file due to task_id and sub_id not being integers")
    await _check_task_access(conn, int(task_id), uploader.user_name, uploader.production)
    name = hpo_checkpoint_name(int(task_id), int(sub_id))
    if not await store.delete(name):
        raise BambooError(f"Failed to delete file due to no such checkpoint: {name}")


@dataclass(frozen=True, slots=True)
class CleanerPolicy:
    max_age: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanerPolicy:
        return cls(max_age=timedelta(days=settings.file_cache_max_age_days))


@dataclass(frozen=True, slots=True)
class CleanerBatch:
    """What one cleaner step removes: expired files, and registry rows without a file."""

    cutoff: datetime
    expired_files: tuple[str, ...]
    orphan_rows: tuple[str, ...]


async def expired(
    conn: AsyncConnection, store: FileStore, clock: Clock, policy: CleanerPolicy
) -> CleanerBatch:
    """The next batch for the cleaner: files not modified within the maximum age (oldest first), and
    names of rows registered before then whose file is gone."""
    cutoff = clock.now() - policy.max_age
    entries = await store.entries()
    old = sorted((entry for entry in entries if entry.modified < cutoff), key=lambda entry: entry.modified)
    present = {entry.name for entry in entries}
    orphans = [
        name for name in await files_db.registered_before(conn, cutoff, ORPHAN_SCAN) if name not in present
    ]
    return CleanerBatch(
        cutoff,
        tuple(entry.name for entry in old[:CLEAN_BATCH]),
        tuple(dict.fromkeys(orphans[:CLEAN_BATCH])),
    )


async def forget(conn: AsyncConnection, batch: CleanerBatch) -> int:
    """Drop the registry rows of a cleaner batch (its files go after the commit)."""
    top_level = [name for name in batch.expired_files if "/" not in name]
    return await files_db.delete_names(conn, [*top_level, *batch.orphan_rows])


async def remove_files(store: FileStore, batch: CleanerBatch, clock: Clock) -> int:
    """Delete a batch's files that are still expired (one touched meanwhile stays), and stale
    temporaries; how many files went."""
    removed = 0
    for name in batch.expired_files:
        stored = await store.stat(name)
        if stored is not None and stored.modified < batch.cutoff and await store.delete(name):
            removed += 1
    return removed + await store.remove_stale_temporaries(clock.now() - TEMPORARY_MAX_AGE)
