"""``/api/v1/statistics/*``: job counts by cloud, site, resource type, processing type and share.

All six are public GETs. Their behaviour lives in ``logic/statistics.py`` (counted by
``db/statistics.py``). An empty system answers ``success: true`` with empty data (DESIGN §9.3).
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import Access, Module
from bamboo.api.v1 import registry
from bamboo.logic import statistics as stats

statistics = Module(registry, "statistics")

TimeWindow = Annotated[
    int | None,
    "Minutes of final jobs to count, 0 to 10080 (7 days); default 12 hours. Active jobs always count.",
]


@statistics.endpoint(method="GET", access=Access.PUBLIC)
async def job_stats_by_cloud(
    call: Call,
    type: Annotated[
        str, "production (managed and pilot-test labels) or analysis (user and panda labels)."
    ] = "production",
) -> Reply:
    """Jobs by cloud and status: active jobs and jobs final in the last 12 hours.

    Data: ``{cloud: {jobStatus: n}}``.
    """
    return Reply(data=await stats.jobs_by_cloud(call.db, call.state.clock, type))


@statistics.endpoint(method="GET", access=Access.PUBLIC)
async def production_job_stats_by_cloud_and_processing_type(call: Call) -> Reply:
    """Production jobs by cloud, processing type and status: active and final in the last 12 hours.

    Data: ``{cloud: {processingType: {jobStatus: n}}}``.
    """
    return Reply(data=await stats.production_jobs_by_cloud_and_processing_type(call.db, call.state.clock))


@statistics.endpoint(method="GET", access=Access.PUBLIC)
async def active_job_stats_by_site(call: Call) -> Reply:
    """Active jobs by site and status (merging left out; assigned, activated, running always shown).

    Data: ``{site: {jobStatus: n}}``.
    """
    return Reply(data=await stats.active_jobs_by_site(call.db))


@statistics.endpoint(method="GET", access=Access.PUBLIC)
async def active_job_detailed_stats_by_site(call: Call) -> Reply:
    """Active jobs by site, resource type, prodSourceLabel and status (as active_job_stats_by_site).

    Data: ``{site: {resource_type: {prodSourceLabel: {jobStatus: n}}}}``.
    """
    return Reply(data=await stats.active_jobs_by_site_detailed(call.db))


@statistics.endpoint(method="GET", access=Access.PUBLIC)
async def job_stats_by_site_and_resource_type(call: Call, time_window: TimeWindow = None) -> Reply:
    """Jobs by site, resource type and status: active jobs and jobs final within the time window.

    Data: ``{site: {resource_type: {jobStatus: n}}}``; assigned, activated, running, finished and
    failed always shown.
    """
    data = await stats.jobs_by_site_and_resource_type(call.db, call.state.clock, time_window)
    return Reply(data=data)


@statistics.endpoint(method="GET", access=Access.PUBLIC)
async def job_stats_by_site_share_and_resource_type(call: Call, time_window: TimeWindow = None) -> Reply:
    """Jobs by site, label of their global share, resource type and status, over the time window.

    Data: ``{site: {prodSourceLabel: {resource_type: {jobStatus: n}}}}``, the label derived from the
    job's global share (``unknown`` when it names none); zero-filled as
    job_stats_by_site_and_resource_type.
    """
    data = await stats.jobs_by_site_share_and_resource_type(call.db, call.state.clock, time_window)
    return Reply(data=data)
