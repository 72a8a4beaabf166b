"""The queue catalog: PanDA queues (CRIC schedconfig entries) that brokerage and dispatch use.

A queue spec is a JSON object. The attributes Bamboo acts on (domain.md §6.1) are validated and
normalised; any other schedconfig attribute is kept as given, so a CRIC export loads unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import queues as queues_db
from bamboo.logic import rebrokerage
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput, NotFound

STATUSES = ("online", "brokeroff", "test", "offline", "paused")
TYPES = ("production", "analysis", "unified")
JOBSEEDS = ("std", "es", "eshigh", "all")
MAX_SPEC_BYTES = 256 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,127}$")
_INT_FIELDS = (
    "corecount",
    "maxrss",
    "minrss",
    "maxtime",
    "mintime",
    "maxwdir",
    "maxinputsize",
    "transferringlimit",
)
_STR_FIELDS = ("cloud", "site", "workflow", "pilot_manager", "harvester", "capability", "wnconnectivity")
# Attributes get_site_specs leaves out, as upstream does (storage endpoint maps and slot maps).
_HIDDEN_FROM_SITE_SPECS = frozenset(
    {
        "ddm_endpoints_input",
        "ddm_endpoints_output",
        "ddm_input",
        "ddm_output",
        "setokens_input",
        "num_slots_map",
    }
)
DEFAULTS: dict[str, Any] = {"status": "online", "type": "unified", "jobseed": "std", "corecount": 1}


def is_valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def normalise_spec(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a queue spec and fill the defaults; raise InvalidInput naming the bad attribute."""
    if not isinstance(raw, dict):
        raise InvalidInput("a queue spec must be a JSON object")
    if len(orjson.dumps(raw)) > MAX_SPEC_BYTES:
        raise InvalidInput(f"queue spec larger than {MAX_SPEC_BYTES} bytes")
    spec = {**DEFAULTS, **raw}
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"queue name {name!r} is invalid: 1-128 of letters, digits, _ . + -, starting alphanumeric"
        )
    _require_choice(spec, "status", STATUSES)
    _require_choice(spec, "type", TYPES)
    _require_choice(spec, "jobseed", JOBSEEDS)
    for key in _INT_FIELDS:
        value = spec.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"queue {name}: '{key}' must be an integer, got {value!r}")
        if key != "corecount" and value < -1:
            raise InvalidInput(f"queue {name}: '{key}' must not be below -1, got {value}")
    corecount = spec.get("corecount")
    if corecount is not None and corecount < -1:
        raise InvalidInput(f"queue {name}: 'corecount' must be -1, 0 or positive, got {corecount}")
    for key in _STR_FIELDS:
        value = spec.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"queue {name}: '{key}' must be a string, got {value!r}")
    return spec


def _require_choice(spec: dict[str, Any], key: str, choices: tuple[str, ...]) -> None:
    if spec.get(key) not in choices:
        raise InvalidInput(
            f"queue {spec.get('name')}: '{key}' must be one of {', '.join(choices)}; got {spec.get(key)!r}"
        )


def specs_from_document(document: Any) -> list[dict[str, Any]]:
    """Queue specs from a schedconfig-style JSON document.

    Accepted: one spec (an object with a string ``name``, or CRIC's ``panda_resource``/``nickname``),
    a list of specs, or an object mapping queue names to specs (the CRIC ``pandaqueue`` dump).
    """
    if isinstance(document, list):
        return [_with_name(item, None) for item in document]
    if isinstance(document, dict):
        if _own_name(document) is not None:
            return [_with_name(document, None)]
        if document and all(isinstance(value, dict) for value in document.values()):
            return [_with_name(spec, name) for name, spec in document.items()]
    raise InvalidInput("expected a queue spec, a list of specs or an object of name -> spec")


def _own_name(spec: dict[str, Any]) -> str | None:
    for key in ("name", "panda_resource", "nickname"):
        if isinstance(spec.get(key), str):
            return spec[key]
    return None


def _with_name(spec: Any, name: str | None) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidInput("every queue spec must be a JSON object")
    own = _own_name(spec)
    if name is not None and own is not None and own != name:
        raise InvalidInput(f"queue spec under key {name!r} names itself {own!r}")
    return {**spec, "name": own or name}


async def put(conn: AsyncConnection, clock: Clock, raw: dict[str, Any]) -> bool:
    """Add or replace a queue. Returns True when it is new.

    The next brokerage sees the new spec; a queue that goes offline sends the jobs still waiting
    there back to their tasks at once, to be brokered elsewhere (:mod:`bamboo.logic.rebrokerage`).
    """
    spec = normalise_spec(raw)
    existing = await queues_db.get(conn, spec["name"])
    new = await queues_db.upsert(conn, spec, clock.now())
    if existing is not None and existing["status"] != "offline":
        await rebrokerage.leave_offline_queue(conn, clock, spec)
    return new


async def update(conn: AsyncConnection, clock: Clock, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change some attributes of an existing queue; ``None`` removes an optional attribute."""
    existing = await queues_db.get(conn, name)
    if existing is None:
        raise NotFound(f"queue {name} not found")
    if "name" in changes and changes["name"] != name:
        raise InvalidInput("a queue cannot be renamed; add the new one and remove the old")
    spec = {key: value for key, value in {**existing["spec"], **changes}.items() if value is not None}
    await put(conn, clock, spec)
    return normalise_spec(spec)


async def remove(conn: AsyncConnection, name: str) -> None:
    if not await queues_db.delete(conn, name):
        raise NotFound(f"queue {name} not found")


async def list_specs(conn: AsyncConnection) -> list[dict[str, Any]]:
    return [row["spec"] for row in await queues_db.list_all(conn)]


async def site_specs(conn: AsyncConnection, queue_type: str) -> dict[str, dict[str, Any]]:
    """metaconfig/get_site_specs: specs of the queues of one type (``all``: every queue)."""
    rows = await queues_db.list_all(conn, None if queue_type == "all" else queue_type)
    return {
        row["name"]: {key: value for key, value in row["spec"].items() if key not in _HIDDEN_FROM_SITE_SPECS}
        for row in rows
    }
