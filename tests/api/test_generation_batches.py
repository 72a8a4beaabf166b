"""The job generator's batch path: the bulk file-row helpers, paged row reading, and cycles that
are rolled back or split over several transactions, on both databases."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.auth.identity import Identity
from bamboo.db import tasks as tasks_db
from bamboo.db.engine import Database
from bamboo.db.schema import job_files, jobs, task_datasets, task_files
from bamboo.logic import generator, queues, refiner
from bamboo.logic import tasks as tasks_logic
from bamboo.logic.catalog import LocalCatalog
from bamboo.logic.splitting import SplitRule

QUEUE = "BATCH_PQ"


def file_row(clock, dataset_id: int, lfn: str, *, task_id: int = 1, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "jediTaskID": task_id,
        "datasetID": dataset_id,
        "creationDate": clock.now(),
        "lfn": lfn,
        "type": "input",
        "status": "ready",
        "attemptNr": 0,
        "failedAttempt": 0,
        "keepTrack": 1,
    }
    row.update(values)
    return row


async def rows_of(db: Database, *conditions: Any) -> list[dict[str, Any]]:
    async with db.transaction(write=False) as conn:
        query = sa.select(task_files).where(*conditions).order_by(task_files.c.fileID)
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def test_add_files_inserts_every_row(db: Database, clock) -> None:
    async with db.transaction() as conn:
        await tasks_db.add_files(conn, [file_row(clock, 7, f"f{i}", fsize=i) for i in range(2500)])
        await tasks_db.add_files(conn, [])
    rows = await rows_of(db, task_files.c.datasetID == 7)
    assert [row["lfn"] for row in rows] == [f"f{i}" for i in range(2500)]
    assert [row["fsize"] for row in rows] == list(range(2500))


async def test_insert_outputs_names_each_row_by_job_and_dataset(db: Database, clock) -> None:
    planned = [
        file_row(clock, dataset_id, f"out.{panda_id}.{dataset_id}", type="output", outPandaID=panda_id)
        for panda_id in range(100, 1600)
        for dataset_id in (21, 22)
    ]
    async with db.transaction() as conn:
        ids = await tasks_db.insert_outputs(conn, planned)
        assert await tasks_db.insert_outputs(conn, []) == {}
    assert len(ids) == len(planned) == len(set(ids.values()))
    by_id = {row["fileID"]: row for row in await rows_of(db, task_files.c.datasetID.in_([21, 22]))}
    for (panda_id, dataset_id), file_id in ids.items():
        row = by_id[file_id]
        assert (row["outPandaID"], row["datasetID"]) == (panda_id, dataset_id)
        assert row["lfn"] == f"out.{panda_id}.{dataset_id}"


async def test_insert_outputs_refuses_rows_it_could_not_tell_apart(db: Database, clock) -> None:
    twins = [file_row(clock, 23, lfn, type="output", outPandaID=5) for lfn in ("a", "b")]
    with pytest.raises(ValueError, match="outPandaID, datasetID"):
        async with db.transaction() as conn:
            await tasks_db.insert_outputs(conn, twins)
    assert await rows_of(db, task_files.c.datasetID == 23) == []


async def test_assign_files_gives_each_row_its_job(db: Database, clock) -> None:
    async with db.transaction() as conn:
        await tasks_db.add_files(conn, [file_row(clock, 8, f"f{i}") for i in range(1200)])
    rows = await rows_of(db, task_files.c.datasetID == 8)
    assigned, untouched = rows[:1100], rows[1100:]
    now = clock.now()
    async with db.transaction() as conn:
        await tasks_db.assign_files(
            conn,
            [(row["fileID"], 9_000 + index // 2) for index, row in enumerate(assigned)],
            status="running",
            proc_status="queued",
            lastAttemptTime=now,
        )
        await tasks_db.assign_files(conn, [], status="running")
    after = {row["fileID"]: row for row in await rows_of(db, task_files.c.datasetID == 8)}
    for index, row in enumerate(assigned):
        got = after[row["fileID"]]
        assert got["PandaID"] == 9_000 + index // 2
        assert (got["status"], got["proc_status"], got["lastAttemptTime"]) == ("running", "queued", now)
    for row in untouched:
        got = after[row["fileID"]]
        assert (got["PandaID"], got["status"], got["proc_status"]) == (None, "ready", None)


async def test_eligible_rows_reads_one_dataset_of_its_task(db: Database, clock) -> None:
    async with db.transaction() as conn:
        ids = {}
        for task_id in (1, 2):
            ids[task_id] = await tasks_db.insert_dataset(
                conn,
                {
                    "jediTaskID": task_id,
                    "datasetName": f"ds{task_id}",
                    "type": "input",
                    "creationTime": clock.now(),
                    "modificationTime": clock.now(),
                    "status": "ready",
                },
            )
        rows = []
        for i in range(30):
            for task_id in (1, 2):
                status = "running" if i % 3 == 0 else "ready"
                rows.append(file_row(clock, ids[task_id], f"t{task_id}.{i}", task_id=task_id, status=status))
        await tasks_db.add_files(conn, rows)
        taken = await tasks_db.eligible_rows(conn, ids[1], 12)
        everything = await tasks_db.eligible_rows(conn, ids[2], 100)
    assert [row["lfn"] for row in taken] == [f"t1.{i}" for i in range(30) if i % 3][:12]
    assert [row["lfn"] for row in everything] == [f"t2.{i}" for i in range(30) if i % 3]


@pytest.mark.parametrize(
    ("rule", "max_jobs"),
    [
        (SplitRule(n_files_per_job=3), 4),
        (SplitRule(n_max_files_per_job=50), 3),
        (SplitRule(n_max_files_per_job=1), 7),
        (SplitRule(n_events_per_job=25), 5),
        (SplitRule(n_files_per_job=4), 100),
    ],
)
async def test_first_groups_match_grouping_all_rows(db: Database, clock, monkeypatch, rule, max_jobs) -> None:
    """Paged reading gives the groups that grouping the first ROWS_PER_TASK rows at once gives."""
    monkeypatch.setattr(generator, "ROWS_PER_TASK", 300)
    async with db.transaction() as conn:
        dataset_id = await tasks_db.insert_dataset(
            conn,
            {
                "jediTaskID": 1,
                "datasetName": "paged",
                "type": "input",
                "creationTime": clock.now(),
                "modificationTime": clock.now(),
                "status": "ready",
            },
        )
        await tasks_db.add_files(
            conn, [file_row(clock, dataset_id, f"f{i:04d}", fsize=1, nEvents=10) for i in range(400)]
        )
        groups = await generator._first_groups(conn, dataset_id, rule, max_jobs)
        rows = await tasks_db.eligible_rows(conn, dataset_id, generator.ROWS_PER_TASK)
    expected = generator.group_rows(
        [generator.Row(key=row, size=row["fsize"], n_events=row["nEvents"]) for row in rows], rule
    )[:max_jobs]
    assert [[row.key["lfn"] for row in group] for group in groups] == [
        [row.key["lfn"] for row in group] for group in expected
    ]


# --- whole cycles -----------------------------------------------------------------------------------


def no_input_task(n_jobs: int) -> dict[str, Any]:
    name = "user.batcher.gen.0001"
    return {
        "taskName": name,
        "vo": "bamboo",
        "prodSourceLabel": "user",
        "site": QUEUE,
        "transPath": "run",
        "noInput": True,
        "nEvents": n_jobs,
        "nEventsPerJob": 1,
        "skipScout": True,
        "jobParameters": [
            {"type": "template", "param_type": "number", "value": "--skipEvents=${SKIPEVENTS}"},
            {
                "type": "template",
                "param_type": "output",
                "dataset": f"{name}_EVNT/",
                "value": f"--out={name}.$JEDITASKID._${{SN/P}}.EVNT.root",
            },
        ],
        "log": {
            "type": "template",
            "param_type": "log",
            "dataset": f"{name}.log/",
            "value": f"{name}.log.$JEDITASKID.${{SN}}.log.tgz",
        },
    }


async def refined_task(db: Database, clock, n_jobs: int) -> int:
    async with db.transaction() as conn:
        await queues.put(conn, clock, {"name": QUEUE, "type": "unified", "corecount": 1})
        task_id = await tasks_logic.submit(
            conn, clock, Identity(dn="/CN=batcher"), no_input_task(n_jobs), None, is_production=False
        )
    async with db.transaction() as conn:
        assert await refiner.refine_registered(conn, clock, LocalCatalog()) == 1
    return task_id


async def check_generated(db: Database, task_id: int, n_jobs: int) -> None:
    """Every input row is held by exactly one job, every job has its two planned outputs, and the
    job's file records point at those rows."""
    async with db.transaction(write=False) as conn:
        job_ids = list(
            (await conn.execute(sa.select(jobs.c.PandaID).where(jobs.c.jediTaskID == task_id))).scalars()
        )
        datasets = {
            row["datasetID"]: row
            for row in (
                await conn.execute(sa.select(task_datasets).where(task_datasets.c.jediTaskID == task_id))
            ).mappings()
        }
        files = [
            dict(row)
            for row in (
                await conn.execute(sa.select(task_files).where(task_files.c.jediTaskID == task_id))
            ).mappings()
        ]
        records = [
            dict(row)
            for row in (
                await conn.execute(sa.select(job_files).where(job_files.c.jediTaskID == task_id))
            ).mappings()
        ]
    assert len(job_ids) == len(set(job_ids)) == n_jobs
    inputs = [row for row in files if row["type"] == "pseudo_input"]
    outputs = [row for row in files if row["type"] in ("output", "log")]
    assert len(inputs) == n_jobs
    assert sorted(row["PandaID"] for row in inputs) == sorted(job_ids)
    assert all(row["status"] == "running" and row["proc_status"] == "queued" for row in inputs)
    assert Counter(row["outPandaID"] for row in outputs) == {panda_id: 2 for panda_id in job_ids}
    master = next(d for d in datasets.values() if d["type"] == "pseudo_input")
    assert master["nFilesUsed"] == n_jobs
    produced = {(row["outPandaID"], row["fileID"]) for row in outputs}
    assert {(record["PandaID"], record["fileID"]) for record in records} == produced
    for record in records:
        assert datasets[record["datasetID"]]["type"] == record["type"]


async def test_a_rolled_back_cycle_leaves_nothing_behind(db: Database, clock) -> None:
    """A generator killed before its commit: the rerun makes every job once and loses no row."""
    task_id = await refined_task(db, clock, 12)

    class Killed(Exception):
        pass

    with pytest.raises(Killed):
        async with db.transaction() as conn:
            assert await generator.generate(conn, clock) == 12
            raise Killed
    async with db.transaction(write=False) as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(jobs))).scalar_one() == 0
    assert all(row["PandaID"] is None for row in await rows_of(db, task_files.c.type == "pseudo_input"))
    async with db.transaction() as conn:
        assert await generator.generate(conn, clock) == 12
    await check_generated(db, task_id, 12)


async def test_a_task_larger_than_a_cycle_is_made_over_several(db: Database, clock, monkeypatch) -> None:
    monkeypatch.setattr(generator, "JOBS_PER_TASK", 4)
    monkeypatch.setattr(generator, "JOBS_PER_CYCLE", 6)
    task_id = await refined_task(db, clock, 23)
    made = []
    runner = AgentRunner(AgentContext(db, clock, LocalCatalog()))
    while done := await runner.run_once("generator"):
        made.append(done)
    assert made == [4, 4, 4, 4, 4, 3]
    await check_generated(db, task_id, 23)
