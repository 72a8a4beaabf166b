"""The static queue documents the real pilot fetches: ``/cache/schedconfig/<queue>.all.json`` and
``/cache/schedconfig/ddmendpoints.json`` (what is in them: :mod:`bamboo.logic.schedconfig`).

Plain GETs without credentials, as upstream's web server serves its schedconfig cache files; they
carry queue settings and a directory path, nothing per user.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from bamboo.api.envelope import JSON_MEDIA_TYPE, encode_json, plain_error
from bamboo.logic import queues, schedconfig
from bamboo.logic.errors import NotFound

QUEUE_SUFFIX = ".all.json"
STORAGES_NAME = "ddmendpoints.json"
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


async def serve_schedconfig(request: Request) -> Response:
    name = request.path_params["name"]
    state = request.app.state.bamboo
    if name == STORAGES_NAME:
        document = schedconfig.storage_endpoints(state.settings.effective_storage_dir)
        return Response(encode_json(document), media_type=JSON_MEDIA_TYPE, headers=_HEADERS)
    queue = name.removesuffix(QUEUE_SUFFIX)
    if queue == name or not queues.is_valid_name(queue):
        return plain_error(404, "no such queue")
    try:
        async with state.db.transaction(write=False) as conn:
            document = await schedconfig.queuedata(conn, queue)
    except NotFound:
        return plain_error(404, "no such queue")
    return Response(encode_json(document), media_type=JSON_MEDIA_TYPE, headers=_HEADERS)
