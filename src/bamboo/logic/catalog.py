"""Data management: where task inputs are looked up and task outputs are registered.

:class:`DataManagement` is the interface; :class:`LocalCatalog` implements it on Bamboo's own
database tables, so a laptop needs no external service. A Rucio-backed implementation can take its
place without touching the agents.

A dataset may be tape-resident (:meth:`DataManagement.tape_rse`): its files reach disk only when
staged (logic/carousel.py with a staging backend such as logic/tape_simulator.py), and each
listed file says whether it has a disk copy (``on_disk``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import catalog as catalog_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput, NotFound

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
    on_disk: bool = True


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

    async def tape_rse(self, conn: AsyncConnection, dataset: str) -> str | None:
        """The tape RSE of a tape-resident dataset, None for a dataset on disk (or unknown)."""
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
                on_disk=row["on_disk"],
            )
            for row in await catalog_db.files(conn, dataset)
        ]

    async def tape_rse(self, conn: AsyncConnection, dataset: str) -> str | None:
        return await catalog_db.tape_rse(conn, dataset)

    async def set_residency(self, conn: AsyncConnection, dataset: str, tape_rse: str | None) -> int:
        """Make ``dataset`` tape-resident at ``tape_rse`` (its files lose their disk copies), or
        with None put it back on disk (every file on disk). Returns its number of files.

        Raises:
            NotFound: the dataset is not in the catalog.
            InvalidInput: ``tape_rse`` is not an RSE name.
        """
        if tape_rse is not None:
            check_rse(tape_rse)
        if not await catalog_db.dataset_exists(conn, dataset):
            raise NotFound(f"dataset {dataset} is not in the catalog")
        return await catalog_db.set_residency(conn, dataset, tape_rse)

    async def mark_on_disk(self, conn: AsyncConnection, dataset: str, lfns: Sequence[str]) -> None:
        """Record disk copies of these files of ``dataset`` (a staging backend delivered them)."""
        await catalog_db.mark_on_disk(conn, dataset, list(lfns))

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


MAX_RSE = 64
_RSE_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def check_rse(value: str) -> str:
    """``value`` if it is an RSE name (Rucio's: letters, digits, ``_`` and ``-``, at most 64)."""
    if not value or len(value) > MAX_RSE or not set(value) <= _RSE_CHARACTERS:
        raise InvalidInput(f"invalid RSE name {value!r}: 1-{MAX_RSE} letters, digits, '_' or '-'")
    return value


def _check_name(value: str, what: str, limit: int) -> None:
    if not value or len(value) > limit or any(ord(c) < 33 for c in value):
        raise InvalidInput(f"invalid {what} {value!r}: 1-{limit} printable characters without spaces")
