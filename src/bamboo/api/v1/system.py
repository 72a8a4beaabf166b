"""``/api/v1/system/*``: liveness and what the server knows about the caller."""

from __future__ import annotations

from typing import Any

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.environ import request_environment
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role, primary_working_group, working_group_production_roles

system = Module(registry, "system")


def _environment(call: Call) -> dict[str, str]:
    settings = call.state.settings
    return request_environment(call.request, call.identity, (settings.proxy_cert_header,))


@system.endpoint(method="GET", access=Access.PUBLIC, db=DbUse.NONE)
async def is_alive(call: Call) -> Reply:
    """Liveness probe: answers success while the server process serves requests.

    It does not touch the database, so it measures the HTTP stack alone.
    """
    return Reply()


@system.endpoint(method="GET", db=DbUse.NONE)
async def get_attributes(call: Call, **parameters: Any) -> Reply:
    """Echo the request parameters and the request environment (credentials left out)."""
    params = {key: str(value) for key, value in sorted(parameters.items())}
    env = _environment(call)
    lines = ["===== param ====="]
    lines += [f"{key} = {value}" for key, value in params.items()]
    lines.append("====== env ======")
    lines += [f"{key} : {value}" for key, value in env.items()]
    return Reply(message="\n".join(lines), data={"parameters": params, "environment": env})


@system.endpoint(method="GET", db=DbUse.NONE)
async def get_voms_attributes(call: Call) -> Reply:
    """The caller's VOMS attributes as the GRST_CRED_* environment variables of gridsite."""
    attributes = {key: value for key, value in _environment(call).items() if key.startswith("GRST_CRED_")}
    return Reply(message="\n".join(f"{key} : {value}" for key, value in attributes.items()), data=attributes)


@system.endpoint(method="GET", db=DbUse.NONE)
async def get_user_attributes(call: Call) -> Reply:
    """The caller's DN, FQANs and production roles as the server sees them."""
    identity = call.caller
    is_production = has_production_role(identity, call.state.settings.production_dns)
    groups = working_group_production_roles(identity.fqans)
    data = {
        "user_dn_raw": identity.dn,
        "user_dn_clean": identity.user_name,
        "fqans": list(identity.fqans),
        "is_production_user": is_production,
        "production_working_groups": groups,
        "primary_working_group": primary_working_group(identity.fqans),
    }
    message = "\n".join(
        [
            f"User DN: {identity.dn}",
            f"User name: {identity.user_name}",
            f"FQANs: {', '.join(identity.fqans) or '(none)'}",
            f"Production role: {'yes' if is_production else 'no'}",
            f"Production working groups: {', '.join(groups) or '(none)'}",
        ]
    )
    return Reply(message=message, data=data)
