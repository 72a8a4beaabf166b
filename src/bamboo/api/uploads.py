"""Multipart bodies of the upload endpoints, streamed to disk as they arrive.

Starlette's form parser keeps each file part in a spooled temporary file under the system's
temporary directory; the upload endpoints take files of hundreds of megabytes, so their parts go
straight to an unnamed temporary file in the configured upload directory (``upload_temp_dir``),
which the kernel removes when it is closed or the process dies. Text fields stay small: each is
bounded like any textual parameter, and so are the part headers and the number of parts.
"""

from __future__ import annotations

import asyncio
import codecs
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers, UploadFile

from bamboo.api.params import MAX_TEXT_VALUE_BYTES

MAX_PARTS = 32
MAX_FILE_PARTS = 4
MAX_HEADER_BYTES = 16 * 1024


class UploadRefused(Exception):
    """The body is not a readable multipart form; the message says why."""


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    header_bytes: int = 0
    name: str = ""
    filename: str | None = None
    text: bytearray = field(default_factory=bytearray)
    file: IO[bytes] | None = None
    size: int = 0


class _Collector:
    """The parser's callbacks: fields into memory (bounded), file parts queued for the disk."""

    def __init__(self, spool_dir: Path, charset: str) -> None:
        self.spool_dir = spool_dir
        self.charset = charset
        self.part = _Part()
        self.fields: list[tuple[str, str | UploadFile]] = []
        self.files: list[IO[bytes]] = []
        self.pending: list[tuple[IO[bytes], bytes]] = []
        self.parts = 0

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadRefused(f"more than {MAX_PARTS} parts")
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_name += data[start:end]
        self._count_header(end - start)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]
        self._count_header(end - start)

    def _count_header(self, size: int) -> None:
        # All headers of a part together, or a client could send the whole body as headers.
        self.part.header_bytes += size
        if self.part.header_bytes > MAX_HEADER_BYTES:
            raise UploadRefused(f"part headers longer than {MAX_HEADER_BYTES} bytes")

    def on_header_end(self) -> None:
        self.part.headers.append((bytes(self.part.header_name).lower(), bytes(self.part.header_value)))
        self.part.header_name.clear()
        self.part.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition = dict(self.part.headers).get(b"content-disposition")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise UploadRefused('a part without the Content-Disposition field "name"')
        self.part.name = self._decode(options[b"name"])
        if b"filename" in options:
            if len(self.files) >= MAX_FILE_PARTS:
                raise UploadRefused(f"more than {MAX_FILE_PARTS} files")
            self.part.filename = self._decode(options[b"filename"])
            self.part.file = tempfile.TemporaryFile(dir=self.spool_dir)
            self.files.append(self.part.file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self.part.file is not None:
            self.part.size += len(piece)
            self.pending.append((self.part.file, piece))
            return
        if len(self.part.text) + len(piece) > MAX_TEXT_VALUE_BYTES:
            raise UploadRefused(f"field '{self.part.name}' is larger than {MAX_TEXT_VALUE_BYTES} bytes")
        self.part.text += piece

    def on_part_end(self) -> None:
        part = self.part
        if part.file is None:
            self.fields.append((part.name, self._decode(bytes(part.text))))
            return
        upload = UploadFile(
            file=part.file,  # type: ignore[arg-type]
            size=part.size,
            filename=part.filename,
            headers=Headers(raw=part.headers),
        )
        self.fields.append((part.name, upload))

    async def flush(self) -> None:
        """Write the file data parsed so far, off the event loop."""
        pending, self.pending = self.pending, []
        for target, piece in pending:
            await asyncio.to_thread(target.write, piece)


async def read_multipart(
    content_type: str, stream: AsyncIterator[bytes], spool_dir: Path
) -> tuple[list[tuple[str, str | UploadFile]], list[IO[bytes]]]:
    """The fields of a multipart body, file parts spooled to disk in ``spool_dir``.

    Returns the fields in body order and the spooled files, which the caller must close. The
    caller bounds the body size (the stream raises when it passes the limit).

    Raises:
        UploadRefused: no boundary, malformed body, or a limit on parts, headers or fields passed.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadRefused("missing boundary in multipart")
    charset = options.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    await asyncio.to_thread(spool_dir.mkdir, parents=True, exist_ok=True)
    collector = _Collector(spool_dir, charset)
    callbacks: Any = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in stream:
            parser.write(chunk)
            await collector.flush()
        parser.finalize()
        await collector.flush()
        for spooled in collector.files:
            spooled.seek(0)
    except MultipartParseError as exc:
        _close(collector.files)
        raise UploadRefused(str(exc) or "malformed multipart body") from exc
    except BaseException:
        _close(collector.files)
        raise
    return collector.fields, collector.files


def _close(files: list[IO[bytes]]) -> None:
    for spooled in files:
        spooled.close()
