"""What the real PanDA pilot reads about its queue and its storage, made from the queue catalog.

The pilot (``panda-pilot`` 3.7, ``pilot/info``) loads two JSON documents before it asks for a job:

* the queue (``/cache/schedconfig/<queue>.all.json``): a CRIC-style schedconfig object. It needs
  ``nickname`` (the queue name; without it the pilot says "wrong PandaQueue name"), ``state``
  ``ACTIVE`` (anything else aborts it), and the copy tools and storages it stages with;
* the storages (``/cache/schedconfig/ddmendpoints.json``): CRIC's ddmendpoints object, storage
  name -> protocols. An empty answer is not enough: the pilot then falls back to CRIC on the
  internet, with three tries 15-45 s apart.

Bamboo's queues default to the ``mv`` copy tool against Bamboo's local storage directory, which
works with nothing installed besides the pilot: inputs are linked from the storage, outputs and
log tarballs moved into it, both at Rucio's deterministic path
(:func:`bamboo.storage.layout.deterministic_path`). The queue spec may override every attribute;
what Bamboo itself keeps in the spec (``catchall`` switches for brokerage, limits) is passed on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import queues as queues_db
from bamboo.logic.errors import NotFound

LOCAL_STORAGE_ENDPOINT = "BAMBOO_LOCAL"
# The catchall switch that lets the mv copy tool read inputs from and write outputs to their final
# place (Rucio's path under the storage) instead of the directory above the pilot's work directory.
MV_FINAL_DESTINATION = "mv_final_destination"
# Transfer activities of the pilot: read (stage-in), write (outputs), log.
_ACTIVITIES = ("pr", "pw", "pl")
_PILOT_DEFAULTS: dict[str, Any] = {
    "state": "ACTIVE",
    "copytools": {"mv": {"setup": ""}},
    "acopytools": {activity: ["mv"] for activity in _ACTIVITIES},
    "astorages": {activity: [LOCAL_STORAGE_ENDPOINT] for activity in _ACTIVITIES},
    "container_type": "",
    "is_cvmfs": False,
    "direct_access_lan": False,
    "direct_access_wan": False,
    "params": {},
}


def pilot_queuedata(spec: dict[str, Any]) -> dict[str, Any]:
    """The schedconfig object of one queue as the pilot reads it (see the module docstring)."""
    name = spec["name"]
    document = {**_PILOT_DEFAULTS, **spec}
    document |= {
        "nickname": name,
        "panda_resource": name,
        "atlas_site": spec.get("atlas_site") or spec.get("site") or name,
        "catchall": _catchall(spec.get("catchall"), document["copytools"]),
    }
    return document


def _catchall(text: Any, copytools: Any) -> str:
    switches = [part for part in str(text or "").split(",") if part.strip()]
    uses_mv = isinstance(copytools, dict) and "mv" in copytools
    if uses_mv and MV_FINAL_DESTINATION not in (part.strip() for part in switches):
        switches.append(MV_FINAL_DESTINATION)
    return ",".join(switches)


async def queuedata(conn: AsyncConnection, name: str) -> dict[str, Any]:
    """The pilot's schedconfig object of queue ``name``; NotFound for a queue not in the catalog."""
    row = await queues_db.get(conn, name)
    if row is None:
        raise NotFound(f"queue {name} not found")
    return pilot_queuedata(row["spec"])


def storage_endpoints(storage_dir: Path) -> dict[str, Any]:
    """The storages object (CRIC ddmendpoints) naming Bamboo's local storage directory.

    The pilot builds an output's destination as endpoint + path + Rucio's path, and the mv copy
    tool strips ``file://localhost`` again, so the file lands under ``storage_dir``.
    """
    protocol = {"endpoint": "file://localhost", "path": str(storage_dir), "flavour": "POSIX", "id": 1}
    return {
        LOCAL_STORAGE_ENDPOINT: {
            "name": LOCAL_STORAGE_ENDPOINT,
            "type": "DATADISK",
            "state": "ACTIVE",
            "is_deterministic": True,
            "arprotocols": {
                activity: [protocol] for activity in ("read_lan", "read_wan", "write_lan", "write_wan")
            },
            "rprotocols": {"1": protocol},
        }
    }
