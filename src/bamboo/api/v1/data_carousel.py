"""``/api/v1/data_carousel/*``: operator controls of tape staging requests (api-v1.md §2.11).

Behaviour lives in ``logic/carousel.py`` (requests, their agent) with the staging backend of
``logic/tape_simulator.py``. Every endpoint is a production-role POST naming a request by
``request_id`` or, without it, by ``dataset`` (its newest request).
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.logic import carousel
from bamboo.logic.catalog import MAX_NAME
from bamboo.logic.errors import BambooError

data_carousel = Module(registry, "data_carousel")

RequestId = Annotated[int | None, "The staging request's id; wins over dataset."]
Dataset = Annotated[
    str | None, f"A dataset name (at most {MAX_NAME} characters): its newest staging request."
]


def _checked(dataset: str | None) -> str | None:
    # A name longer than any catalog name cannot have a request.
    if dataset is not None and len(dataset) > MAX_NAME:
        raise BambooError(carousel.NOT_FOUND)
    return dataset


def _wake_carousel(call: Call) -> None:
    call.on_commit.append(lambda: call.state.wake("carousel"))
    call.on_commit.append(lambda: call.state.wake("feeder"))


@data_carousel.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def change_staging_destination(
    call: Call, request_id: RequestId = None, dataset: Dataset = None
) -> Reply:
    """Cancel the active staging request and stage the dataset again at the next destination not
    tried yet (``carousel_destinations``); its tasks follow the new request.

    There is no iDDS here: the message says so instead of announcing iDDS requests.
    """
    outcome = await carousel.change_destination(
        call.db,
        call.state.clock,
        carousel.backend_for(call.state.settings),
        carousel.CarouselPolicy.from_settings(call.state.settings),
        request_id,
        _checked(dataset),
    )
    _wake_carousel(call)
    return Reply(message=outcome.message, data=outcome.data)


@data_carousel.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def change_staging_source(
    call: Call,
    request_id: RequestId = None,
    dataset: Dataset = None,
    cancel_fts: Annotated[bool, "Restart the transfers in flight from the new source."] = False,
    change_src_expr: Annotated[bool, "Drop the source (recall from any copy) instead of naming one."] = False,
    source_rse: Annotated[str | None, "The new source tape RSE (required unless change_src_expr)."] = None,
) -> Reply:
    """Change where a queued or staging request recalls its files from."""
    outcome = await carousel.change_source(
        call.db,
        call.state.clock,
        carousel.backend_for(call.state.settings),
        request_id,
        _checked(dataset),
        cancel_fts=cancel_fts,
        change_src_expr=change_src_expr,
        source_rse=source_rse,
    )
    _wake_carousel(call)
    return Reply(message=outcome.message, data=outcome.data)


@data_carousel.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def force_to_staging(call: Call, request_id: RequestId = None, dataset: Dataset = None) -> Reply:
    """Stage a queued request now, past the per-tape limit."""
    outcome = await carousel.force_to_staging(
        call.db,
        call.state.clock,
        carousel.backend_for(call.state.settings),
        carousel.CarouselPolicy.from_settings(call.state.settings),
        request_id,
        _checked(dataset),
    )
    _wake_carousel(call)
    return Reply(message=outcome.message, data=outcome.data)


@data_carousel.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def retire_unused(call: Call, request_id: RequestId = None, dataset: Dataset = None) -> Reply:
    """Retire a done request whose tasks have all ended: new tasks no longer reuse it."""
    outcome = await carousel.retire_unused(call.db, call.state.clock, request_id, _checked(dataset))
    return Reply(message=outcome.message, data=outcome.data)
