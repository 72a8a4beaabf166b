"""The local file store: all-or-nothing writes, no overwrite without asking, safe names, no links."""

from __future__ import annotations

import asyncio
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bamboo.storage import AlreadyExists, LocalFileStore, TooLarge, UnsafeName


class BrokenSource(io.RawIOBase):
    """A stream that fails after some bytes, as a client hanging up mid-upload would."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError("connection lost")
        piece = min(self.left, 4096)
        self.left -= piece
        return b"x" * piece


def names(root: Path) -> list[str]:
    return sorted(os.listdir(root)) if root.exists() else []


async def test_a_failed_or_oversize_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path / "cache")
    with pytest.raises(OSError, match="connection lost"):
        await store.write("a.tar.gz", BrokenSource(10_000), max_bytes=1 << 20, replace=False)
    with pytest.raises(TooLarge):
        await store.write("b.tar.gz", io.BytesIO(b"x" * 101), max_bytes=100, replace=False)
    assert names(tmp_path / "cache") == []


async def test_no_overwrite_unless_asked_and_one_winner(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    results = await asyncio.gather(
        *(
            store.write("same", io.BytesIO(bytes([i]) * 1000), max_bytes=2000, replace=False)
            for i in range(8)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(result, Exception) for result in results) == 1
    assert all(isinstance(result, AlreadyExists) for result in results if isinstance(result, Exception))
    assert len(set((tmp_path / "same").read_bytes())) == 1
    await store.write("same", io.BytesIO(b"new"), max_bytes=10, replace=True)
    assert (tmp_path / "same").read_bytes() == b"new"
    assert names(tmp_path) == ["same"]


@pytest.mark.parametrize("name", ["", "..", "a/../b", "a/b/c", "/etc/passwd", ".hidden", "a\x00b", "x" * 256])
async def test_unsafe_names_never_reach_the_file_system(tmp_path: Path, name: str) -> None:
    store = LocalFileStore(tmp_path)
    with pytest.raises(UnsafeName):
        await store.write(name, io.BytesIO(b"x"), max_bytes=10, replace=True)
    with pytest.raises(UnsafeName):
        await store.open(name)


async def test_links_and_directories_are_not_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("key")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "link").symlink_to(secret)
    (cache / "dir").mkdir()
    store = LocalFileStore(cache)
    assert await store.open("link") is None
    assert await store.open("dir") is None
    assert await store.read("link", offset=0, max_bytes=10) is None
    assert await store.delete("link") is False
    assert secret.read_text() == "key"
    assert [entry.name for entry in await store.entries()] == []


async def test_append_is_bounded_and_temporaries_expire(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    await store.append("log", io.BytesIO(b"one\n"), max_total_bytes=10)
    with pytest.raises(TooLarge):
        await store.append("log", io.BytesIO(b"two and more\n"), max_total_bytes=10)
    assert (tmp_path / "log").read_bytes() == b"one\n"
    (tmp_path / ".tmp-dead").write_bytes(b"half")
    now = datetime.now(UTC)
    assert await store.remove_stale_temporaries(now - timedelta(hours=1)) == 0
    assert await store.remove_stale_temporaries(now + timedelta(hours=1)) == 1
    assert names(tmp_path) == ["log"]
