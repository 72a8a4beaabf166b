"""The PanDA API v1 modules. Importing :func:`load` declares every endpoint in :data:`registry`."""

from __future__ import annotations

import importlib

from bamboo.api.registry import Registry

registry = Registry()

# URL module names, as clients call them (``creds`` is upstream's credential_management).
MODULES = (
    "system",
    "metaconfig",
    "task",
    "job",
    "pilot",
    "harvester",
    "event",
    "file_server",
    "async_process",
    "workflow",
    "idds",
    "creds",
    "data_carousel",
    "statistics",
)


def load() -> Registry:
    for name in MODULES:
        importlib.import_module(f"bamboo.api.v1.{name}")
    return registry
