"""Data management: where task inputs are looked up and task outputs are registered.

:class:`DataManagement` is the interface; :class:`LocalCatalog` implements it on Bamboo's own
database tables, so a laptop needs no external service. A Rucio-backed implementation can take its
place without touching the agents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import catalog as catalog_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput

MAX_NAME = 255
MAX_LFN = 256


@dataclass(frozen=True, slots=True)
class CatalogFile:
    lfn: str
    scope: str | None = None
    guid: str | None = None
    fsize: int | None = None
    checksum: str | None = None
    n_events: int | None = None


def scope_of(dataset: str) -> str:
    """The data-management scope of a dataset name: ``scope:name`` explicitly, otherwise the
    first two fields for ``user.``/``group.`` names and the first field for others."""
    if ":" in dataset:
        return dataset.split(":", 1)[0]
    fields = dataset.rstrip("/").split(".")
    if fields[0] in ("user", "group") and len(fields) > 1:
        return ".".join(fields[:2])
    return fields[0]


class DataManagement(Protocol):
    async def list_files(self, conn: AsyncConnection, dataset: str) -> list[CatalogFile] | None:
        """The files of a dataset in order, or None when the dataset is unknown."""
        ...

    async def register_files(
        self, conn: AsyncConnection, clock: Clock, dataset: str, files: Sequence[CatalogFile]
    ) -> int:
        """Add files to a dataset (created if needed); returns how many were new."""
        ...


class LocalCatalog:
    """The embedded catalog in Bamboo's database."""

    async def list_files(self, conn: AsyncConnection, dataset: str) -> list[CatalogFile] | None:
        if not await catalog_db.dataset_exists(conn, dataset):
            return None
        return [
            CatalogFile(
                lfn=row["lfn"],
                scope=row["scope"],
                guid=row["guid"],
                fsize=row["fsize"],
                checksum=row["checksum"],
                n_events=row["n_events"],
            )
            for row in await catalog_db.files(conn, dataset)
        ]

    async def register_files(
        self, conn: AsyncConnection, clock: Clock, dataset: str, files: Sequence[CatalogFile]
    ) -> int:
        _check_name(dataset, "dataset name", MAX_NAME)
        for item in files:
            _check_name(item.lfn, "file name", MAX_LFN)
            if item.fsize is not None and item.fsize < 0:
                raise InvalidInput(f"file {item.lfn}: size must not be negative")
            if item.n_events is not None and item.n_events < 0:
                raise InvalidInput(f"file {item.lfn}: events must not be negative")
        now = clock.now()
        scope = scope_of(dataset)
        await catalog_db.ensure_dataset(conn, dataset, scope, now)
        rows = [
            {
                "lfn": item.lfn,
                "scope": item.scope or scope,
                "guid": item.guid,
                "fsize": item.fsize,
                "checksum": item.checksum,
                "n_events": item.n_events,
            }
            for item in files
        ]
        return await catalog_db.add_files(conn, dataset, rows, now)


def _check_name(value: str, what: str, limit: int) -> None:
    if not value or len(value) > limit or any(ord(c) < 33 for c in value):
        raise InvalidInput(f"invalid {what} {value!r}: 1-{limit} printable characters without spaces")
