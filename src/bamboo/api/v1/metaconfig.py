"""``/api/v1/metaconfig/*``: the ban list, the queue catalog and the resource types."""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply, failure
from bamboo.api.registry import Access, Module
from bamboo.api.v1 import registry
from bamboo.logic import queues, resource_types, users

metaconfig = Module(registry, "metaconfig")


@metaconfig.endpoint(method="GET")
async def get_banned_users(call: Call) -> Reply:
    """The banned users, as ``{"<user name>": false}``."""
    return Reply(data=await users.banned_users_map(call.db))


@metaconfig.endpoint(method="GET", access=Access.PUBLIC)
async def get_site_specs(
    call: Call,
    type: Annotated[
        str, "Queue type to list: analysis, production, unified, or all for every queue."
    ] = "analysis",
) -> Reply:
    """The site specs of the PanDA queues of one type, keyed by queue name."""
    return Reply(data=await queues.site_specs(call.db, type))


@metaconfig.endpoint(method="GET")
async def get_resource_types(call: Call) -> Reply:
    """The resource types with their core and memory-per-core bounds, in matching order."""
    rows = await resource_types.resource_type_list(call.db)
    if not rows:
        return failure("database error in the PanDA server")
    return Reply(data=rows)
