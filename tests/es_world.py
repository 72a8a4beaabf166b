"""An event-service task in the state job generation leaves it (helper brief, "Event rows" and
"Job fields"), made by direct inserts: a refined input task whose input rows form one jobset
(``PandaID = jobsetID``, running), its consumer jobs (eventService 1) and its ready ranges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bamboo.db import jobs as jobs_db
from bamboo.db import sequences
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import events, task_files
from bamboo.logic.catalog import CatalogFile
from bamboo.logic.job_rows import output_files, planned_output_row, task_job_row
from bamboo.logic.jobparams import output_file_name
from tests.api.test_task_flow import submit
from tests.tasks import input_task


@dataclass
class EsJobset:
    task_id: int
    jobset_id: int
    consumers: list[int]
    file_ids: list[int]
    ranges: int
    output_file_id: int = 0
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)


async def es_task(
    api,
    runner,
    name: str,
    *,
    n_files: int = 2,
    events_per_file: int = 4,
    events_per_range: int = 2,
    range_attempts: int = 10,
    n_consumers: int = 1,
    split_rule: str | None = None,
    esmerge: dict[str, str] | None = None,
    clones: str | None = None,
) -> EsJobset:
    """A refined task of ``n_files`` input files made into one ES jobset with its consumers, or
    with ``clones`` ("runonce"/"storeonce"), a job-cloning task's jobset of clones sharing the
    input rows and one semaphore range."""
    dataset = f"user.testuser.{name}.in"
    files = [
        CatalogFile(lfn=f"{name}.{i:02d}.root", fsize=1000 + i, n_events=events_per_file)
        for i in range(n_files)
    ]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, dataset, files)
    params = input_task(dataset, f"user.testuser.{name}", n_files_per_job=n_files)
    # The task parameters of an ES (or job-cloning) task, as submitted.
    if clones:
        params["useJobCloning"] = clones
    else:
        params.update(eventService=1, nEventsPerWorker=events_per_range, maxAttemptES=range_attempts)
    if esmerge is not None:
        params["esmergeSpec"] = esmerge
    task_id = await submit(api, params)
    assert await runner.run_once("refiner") >= 1
    now = api.state.clock.now()
    async with api.state.db.transaction() as conn:
        task = await tasks_db.get(conn, task_id)
        await tasks_db.write_status(conn, task_id, "running")
        await tasks_db.update(conn, task_id, eventService=2 if clones else 1)
        if clones:
            split_rule = ",".join(filter(None, [split_rule, f"UC={1 if clones == 'runonce' else 2}"]))
        if split_rule:
            rules = ",".join(filter(None, [task["splitRule"], split_rule]))
            await tasks_db.update(conn, task_id, splitRule=rules)
        task = await tasks_db.get(conn, task_id)
        datasets = {d["type"]: d for d in await tasks_db.datasets(conn, task_id)}
        master = datasets["input"]
        rows = sorted(
            (
                dict(r)
                for r in (
                    await conn.execute(
                        sa.select(task_files).where(task_files.c.datasetID == master["datasetID"])
                    )
                ).mappings()
            ),
            key=lambda r: r["fileID"],
        )
        (jobset_id,) = await sequences.allocate(conn, sequences.PANDA_ID, 1)
        await tasks_db.update_files(
            conn, [r["fileID"] for r in rows], PandaID=jobset_id, status="running", proc_status="queued"
        )
        await tasks_db.bump_dataset(conn, master["datasetID"], now, nFilesUsed=len(rows))
        ranges = []
        for row in rows:
            start = row["startEvent"] or 0
            n = row["nEvents"] or events_per_file
            for first in range(start, start + n, events_per_range):
                last = min(first + events_per_range, start + n) - 1
                ranges.append(
                    {
                        "jediTaskID": task_id,
                        "datasetID": row["datasetID"],
                        "PandaID": jobset_id,
                        "jobsetID": jobset_id,
                        "fileID": row["fileID"],
                        "job_processID": first,
                        "attemptNr": range_attempts,
                        "status": "ready",
                        "def_min_eventID": first,
                        "def_max_eventID": last,
                        "is_jumbo": False,
                        "modificationTime": now,
                    }
                )
        if clones:
            # One semaphore range per jobset (helper brief: job cloning).
            ranges = [
                {**ranges[0], "job_processID": 0, "def_min_eventID": 0, "def_max_eventID": 0, "attemptNr": 1}
            ]
        await conn.execute(sa.insert(events), ranges)
        # The jobset's data output: one planned row held by the jobset (outPandaID = jobsetID),
        # taken over by the merge job or the winning clone.
        out_dataset = datasets["output"]
        out_serial = await tasks_db.reserve_serials(conn, out_dataset["datasetID"], 1)
        out_lfn = output_file_name(out_dataset["filename_template"], out_serial, task_id=task_id)
        held = await tasks_db.insert_outputs(
            conn, [planned_output_row(task_id, out_dataset, out_lfn, jobset_id, now)]
        )
        out_file_id = held[jobset_id, out_dataset["datasetID"]]
        consumers = await sequences.allocate(conn, sequences.PANDA_ID, n_consumers)
        log_dataset = datasets["log"]
        job_rows, job_files = [], []
        for panda_id in consumers:
            serial = await tasks_db.reserve_serials(conn, log_dataset["datasetID"], 1)
            lfn = output_file_name(log_dataset["filename_template"], serial, task_id=task_id)
            ids = await tasks_db.insert_outputs(
                conn, [planned_output_row(task_id, log_dataset, lfn, panda_id, now)]
            )
            job = task_job_row(
                task,
                {"name": "TEST_PQ"},
                panda_id=panda_id,
                origin=panda_id,
                attempt=1,
                cores=1,
                memory=0,
                resource_type="SCORE",
                parameters=f"--out {out_lfn} --log {lfn}",
                now=now,
            )
            job.update(eventService=3 if clones else 1, jobsetID=jobset_id, maxAttempt=1)
            if clones:
                job["specialHandling"] = f"cloning:{clones}"
            job_rows.append(job)
            job_files.extend(
                {
                    "PandaID": panda_id,
                    "lfn": row["lfn"],
                    "GUID": row["GUID"],
                    "type": "input",
                    "dataset": master["datasetName"],
                    "status": "ready",
                    "scope": row["scope"],
                    "jediTaskID": task_id,
                    "datasetID": row["datasetID"],
                    "fileID": row["fileID"],
                    "attemptNr": 0,
                }
                for row in rows
            )
            job_files.extend(
                output_files(
                    task_id,
                    "TEST_PQ",
                    panda_id,
                    1,
                    [(log_dataset, lfn, ids[panda_id, log_dataset["datasetID"]])]
                    # Clones carry the jobset's data output (the same file in every clone);
                    # consumers do not.
                    + ([(out_dataset, out_lfn, out_file_id)] if clones else []),
                )
            )
        await jobs_db.insert(conn, job_rows, job_files)
    return EsJobset(
        task_id=task_id,
        jobset_id=jobset_id,
        consumers=list(consumers),
        file_ids=[r["fileID"] for r in rows],
        ranges=len(ranges),
        datasets=datasets,
        output_file_id=out_file_id,
    )


async def run_ranges(api, panda_id: int, jobset_id: int, n: int, status: str = "finished") -> list[int]:
    """Hand ``n`` ready ranges of the jobset to a consumer (as acquire does) and give them ``status``
    (as update does; ``sent`` leaves them handed out). Returns their row ids."""
    async with api.state.db.transaction() as conn:
        picked = list(
            (
                await conn.execute(
                    sa.select(events.c.row_ID)
                    .where(events.c.PandaID == jobset_id, events.c.status == "ready", events.c.attemptNr > 0)
                    .order_by(events.c.fileID, events.c.job_processID)
                    .limit(n)
                )
            ).scalars()
        )
        await conn.execute(
            sa.update(events).where(events.c.row_ID.in_(picked)).values(status=status, PandaID=panda_id)
        )
    return picked


async def report_end(api, panda_id: int, status: str = "finished") -> None:
    """The pilot's final report (the job waits in holding for the finaliser)."""
    async with api.state.db.transaction() as conn:
        await jobs_db.update(conn, panda_id, jobStatus="holding", reported_status=status, output_report=None)


async def ranges_of(api, jobset_id: int) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(events).where(events.c.jobsetID == jobset_id).order_by(events.c.row_ID)
        return [dict(r) for r in (await conn.execute(query)).mappings()]
