"""The job archive, the worker-node catalog, Harvester workers and the worker -> job relation.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The job and file columns as they are at this revision (a frozen copy of schema.py's lists, so
# later column additions come with their own migrations): name:type code, B bigint, i int,
# f float, t UTC timestamp, T text, sN string of N, P the file row key.
_JOB_COLUMNS = """
    PandaID:B jobDefinitionID:B schedulerID:s128 pilotID:s200 creationTime:t creationHost:s128
    modificationTime:t modificationHost:s128 AtlasRelease:s64 transformation:s250 homepackage:s80
    prodSeriesLabel:s20 prodSourceLabel:s20 prodUserID:s250 assignedPriority:i currentPriority:i
    attemptNr:i maxAttempt:i jobStatus:s15 jobName:s256 maxCpuCount:B maxCpuUnit:s32 maxDiskCount:B
    maxDiskUnit:s10 ipConnectivity:s5 minRamCount:B minRamUnit:s2 startTime:t endTime:t
    cpuConsumptionTime:B cpuConsumptionUnit:s128 commandToPilot:s250 transExitCode:s128 pilotErrorCode:i
    pilotErrorDiag:s500 exeErrorCode:i exeErrorDiag:s500 supErrorCode:i supErrorDiag:s250 ddmErrorCode:i
    ddmErrorDiag:s500 brokerageErrorCode:i brokerageErrorDiag:s250 jobDispatcherErrorCode:i
    jobDispatcherErrorDiag:s250 taskBufferErrorCode:i taskBufferErrorDiag:s300 computingSite:s128
    computingElement:s128 jobParameters:T metadata:T prodDBlock:s255 dispatchDBlock:s255
    destinationDBlock:s255 destinationSE:s250 nEvents:B grid:s50 cloud:s50 cpuConversion:f
    sourceSite:s36 destinationSite:s36 transferType:s10 taskID:B cmtConfig:s250 stateChangeTime:t
    prodDBUpdateTime:t lockedby:s128 relocationFlag:i jobExecutionID:B VO:s16 pilotTiming:s100
    workingGroup:s20 processingType:s64 prodUserName:s60 nInputFiles:i countryGroup:s20 batchID:s80
    parentID:B specialHandling:s80 jobsetID:B coreCount:i nInputDataFiles:i inputFileType:s32
    inputFileProject:s64 inputFileBytes:B nOutputDataFiles:i outputFileBytes:B jobMetrics:s500
    workQueue_ID:i jediTaskID:B jobSubStatus:s80 actualCoreCount:i reqID:B maxRSS:B maxVMEM:B maxSWAP:B
    maxPSS:B avgRSS:B avgVMEM:B avgSWAP:B avgPSS:B maxWalltime:B nucleus:s52 eventService:i
    failedAttempt:i hs06sec:B gshare:s32 hs06:B totRCHAR:B totWCHAR:B totRBYTES:B totWBYTES:B
    rateRCHAR:B rateWCHAR:B rateRBYTES:B rateWBYTES:B resource_type:s56 diskIO:B memory_leak:B
    memory_leak_x2:f container_name:s200 job_label:s20 gco2_regional:f gco2_global:f
    cpu_architecture_level:s20 outputFileType:s32
"""
_FILE_COLUMNS = """
    row_ID:P PandaID:B GUID:s64 lfn:s256 type:s20 dataset:s255 status:s64 prodDBlock:s255
    prodDBlockToken:s250 dispatchDBlock:s255 dispatchDBlockToken:s250 destinationDBlock:s255
    destinationDBlockToken:s250 destinationSE:s250 fsize:B md5sum:s40 checksum:s40 scope:s30
    jediTaskID:B datasetID:B fileID:B attemptNr:i
"""
_TYPES = {"B": sa.BigInteger, "i": sa.Integer, "f": sa.Float, "T": sa.Text}


def _type(code: str) -> sa.types.TypeEngine[object]:
    if code == "t":
        return UTCDateTime()
    if code.startswith("s"):
        return sa.String(int(code[1:]))
    if code == "P":
        return sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    return _TYPES[code]()


def _columns(spec: str, key: str) -> list[sa.Column[object]]:
    pairs = [item.split(":") for item in spec.split()]
    return [
        sa.Column(name, _type(code), primary_key=name == key, autoincrement=False, nullable=name != key)
        for name, code in pairs
    ]


def upgrade() -> None:
    op.create_table(
        "jobs_archive",
        *_columns(_JOB_COLUMNS, "PandaID"),
        sa.Column("reported_status", sa.String(16), nullable=True),
        sa.Column("output_report", sa.Text(), nullable=True),
        sa.Column("pilot_log", sa.Text(), nullable=True),
        sa.Column("stdout", sa.Text(), nullable=True),
        sa.Column("origin_panda_id", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_jobs_archive_task", "jobs_archive", ["jediTaskID"])
    op.create_index("ix_jobs_archive_time", "jobs_archive", ["modificationTime"])
    op.create_table("job_files_archive", *_columns(_FILE_COLUMNS, "row_ID"))
    op.create_index("ix_job_files_archive_panda", "job_files_archive", ["PandaID"])
    op.create_table(
        "worker_nodes",
        sa.Column("site", sa.String(128), primary_key=True),
        sa.Column("host_name", sa.String(128), primary_key=True),
        sa.Column("cpu_model", sa.String(128), primary_key=True),
        sa.Column("cpu_model_normalized", sa.String(128), nullable=True),
        sa.Column("n_logical_cpus", sa.Integer(), nullable=True),
        sa.Column("n_sockets", sa.Integer(), nullable=True),
        sa.Column("cores_per_socket", sa.Integer(), nullable=True),
        sa.Column("threads_per_core", sa.Integer(), nullable=True),
        sa.Column("cpu_architecture", sa.String(20), nullable=True),
        sa.Column("cpu_architecture_level", sa.String(20), nullable=True),
        sa.Column("clock_speed", sa.Float(), nullable=True),
        sa.Column("total_memory", sa.BigInteger(), nullable=True),
        sa.Column("total_local_disk", sa.BigInteger(), nullable=True),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "worker_node_queues",
        sa.Column("site", sa.String(128), primary_key=True),
        sa.Column("host_name", sa.String(128), primary_key=True),
        sa.Column("panda_queue", sa.String(128), primary_key=True),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "worker_node_gpus",
        sa.Column("site", sa.String(128), primary_key=True),
        sa.Column("host_name", sa.String(128), primary_key=True),
        sa.Column("vendor", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("vram", sa.BigInteger(), nullable=True),
        sa.Column("architecture", sa.String(64), nullable=True),
        sa.Column("framework", sa.String(64), nullable=True),
        sa.Column("framework_version", sa.String(64), nullable=True),
        sa.Column("driver_version", sa.String(64), nullable=True),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "harvester_workers",
        sa.Column("harvesterID", sa.String(50), primary_key=True),
        sa.Column("workerID", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("batchID", sa.String(80), nullable=True),
        sa.Column("queueName", sa.String(80), nullable=True),
        sa.Column("status", sa.String(80), nullable=True),
        sa.Column("computingSite", sa.String(128), nullable=True),
        sa.Column("nCore", sa.Integer(), nullable=True),
        sa.Column("nodeID", sa.String(80), nullable=True),
        sa.Column("submitTime", UTCDateTime(), nullable=True),
        sa.Column("startTime", UTCDateTime(), nullable=True),
        sa.Column("endTime", UTCDateTime(), nullable=True),
        sa.Column("stdOut", sa.String(250), nullable=True),
        sa.Column("stdErr", sa.String(250), nullable=True),
        sa.Column("batchLog", sa.String(250), nullable=True),
        sa.Column("jdl", sa.String(250), nullable=True),
        sa.Column("resourceType", sa.String(56), nullable=True),
        sa.Column("nativeExitCode", sa.Integer(), nullable=True),
        sa.Column("nativeStatus", sa.String(80), nullable=True),
        sa.Column("diagMessage", sa.String(500), nullable=True),
        sa.Column("nJobs", sa.Integer(), nullable=True),
        sa.Column("computingElement", sa.String(128), nullable=True),
        sa.Column("submissionHost", sa.String(128), nullable=True),
        sa.Column("harvesterHost", sa.String(128), nullable=True),
        sa.Column("errorCode", sa.Integer(), nullable=True),
        sa.Column("jobType", sa.String(80), nullable=True),
        sa.Column("minRamCount", sa.Integer(), nullable=True),
        sa.Column("pilotStatus", sa.String(80), nullable=True),
        sa.Column("pilotStartTime", UTCDateTime(), nullable=True),
        sa.Column("pilotEndTime", UTCDateTime(), nullable=True),
        sa.Column("lastUpdate", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_harvester_workers_site", "harvester_workers", ["computingSite", "status"])
    op.create_table(
        "worker_jobs",
        sa.Column("harvesterID", sa.String(50), primary_key=True),
        sa.Column("workerID", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("PandaID", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("lastUpdate", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_worker_jobs_panda", "worker_jobs", ["PandaID"])


def downgrade() -> None:
    for table in (
        "worker_jobs",
        "harvester_workers",
        "worker_node_gpus",
        "worker_node_queues",
        "worker_nodes",
        "job_files_archive",
        "jobs_archive",
    ):
        op.drop_table(table)
