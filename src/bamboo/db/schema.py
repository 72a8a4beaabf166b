"""Tables (SQLAlchemy Core). Every change here comes with an Alembic migration."""

from __future__ import annotations

import sqlalchemy as sa

from bamboo.db.types import UTCDateTime

metadata = sa.MetaData()

# PanDA queues (CRIC "schedconfig" entries). The attributes brokerage filters on are columns; the
# whole site spec, as loaded, is kept in `spec` so metaconfig/get_site_specs can return it intact.
queues = sa.Table(
    "queues",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("cloud", sa.String(64), nullable=True),
    sa.Column("site", sa.String(128), nullable=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Resource types in table order: matching takes the first row whose bounds contain a job.
resource_types = sa.Table(
    "resource_types",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False, unique=True),
    sa.Column("mincore", sa.Integer, nullable=True),
    sa.Column("maxcore", sa.Integer, nullable=True),
    sa.Column("minrampercore", sa.Integer, nullable=True),
    sa.Column("maxrampercore", sa.Integer, nullable=True),
)

# Users known to the server by compact user name; status "disabled" means banned.
users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("dn", sa.String(1024), nullable=True),
    sa.Column("email", sa.String(256), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Allow-list letters for the creds endpoints: p (proxies, access tokens), k (key pairs),
    # t (token keys); PanDA's USERS.GRIDPREF.
    sa.Column("gridpref", sa.String(16), nullable=True),
)

# Per-user secrets (domain.md §9.2): the owner's whole {key: value} dict as JSON, sealed with
# AES-GCM by the key named in key_id (logic/secrets.py); never stored in clear.
user_secrets = sa.Table(
    "user_secrets",
    metadata,
    sa.Column("owner", sa.String(256), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_user_secrets_key", "key_id"),
)

# Cached credentials served by creds/get_proxy (kind "proxy", subject = bare DN, role) and
# creds/get_access_token (kind "token", subject = client name, role ""), sealed like user_secrets.
cached_credentials = sa.Table(
    "cached_credentials",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("subject", sa.String(1024), primary_key=True),
    sa.Column("role", sa.String(256), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_cached_credentials_key", "key_id"),
)


# PanDA record attributes, in upstream order (api-v1.md §3.10): name and column type code
# (B bigint, i int, f float, t UTC timestamp, T text, sN string of N). The tables below use these
# names as column names so records go out exactly as clients expect them.
_TYPES = {"B": sa.BigInteger, "i": sa.Integer, "f": sa.Float, "T": sa.Text}


def _parse_attributes(spec: str) -> tuple[tuple[str, str], ...]:
    return tuple((item.split(":")[0], item.split(":")[1]) for item in spec.split())


def _column_type(code: str) -> sa.types.TypeEngine[object]:
    if code == "t":
        return UTCDateTime()
    if code.startswith("s"):
        return sa.String(int(code[1:]))
    return _TYPES[code]()


JOB_ATTRIBUTES = _parse_attributes(
    """
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
)
FILE_ATTRIBUTES = _parse_attributes(
    """
    row_ID:P PandaID:B GUID:s64 lfn:s256 type:s20 dataset:s255 status:s64 prodDBlock:s255
    prodDBlockToken:s250 dispatchDBlock:s255 dispatchDBlockToken:s250 destinationDBlock:s255
    destinationDBlockToken:s250 destinationSE:s250 fsize:B md5sum:s40 checksum:s40 scope:s30
    jediTaskID:B datasetID:B fileID:B attemptNr:i
"""
)
TASK_ATTRIBUTES = _parse_attributes(
    """
    jediTaskID:B taskName:s256 status:s64 userName:s128 creationDate:t modificationTime:t startTime:t
    endTime:t frozenTime:t prodSourceLabel:s20 workingGroup:s32 vo:s16 coreCount:i taskType:s64
    processingType:s64 taskPriority:i currentPriority:i architecture:s256 transUses:s64 transHome:s128
    transPath:s128 lockedBy:s40 lockedTime:t termCondition:s100 splitRule:s2000 walltime:i
    walltimeUnit:s32 outDiskCount:i outDiskUnit:s32 workDiskCount:i workDiskUnit:s32 ramCount:i
    ramUnit:s32 ioIntensity:i ioIntensityUnit:s32 workQueue_ID:i progress:i failureRate:i
    errorDialog:s510 reqID:B oldStatus:s64 cloud:s10 site:s256 countryGroup:s20 parent_tid:B
    eventService:i ticketID:s50 ticketSystemType:s16 stateChangeTime:t superStatus:s64 campaign:s72
    mergeRamCount:i mergeRamUnit:s32 mergeWalltime:i mergeWalltimeUnit:s32 throttledTime:t
    numThrottled:i mergeCoreCount:i goal:i assessmentTime:t cpuTime:i cpuTimeUnit:s32 cpuEfficiency:i
    baseWalltime:i nucleus:s52 baseRamCount:i ttcRequested:t ttcPredicted:t ttcPredictionDate:t
    rescueTime:t requestType:s32 gshare:s32 resource_type:s56 useJumbo:s1 diskIO:i diskIOUnit:s32
    memory_leak_core:B memory_leak_x2:B attemptNr:i container_name:s200 framework:s50 activatedTime:t
    queuedTime:t actionTime:t
"""
)
JOB_FIELDS = tuple(name for name, _ in JOB_ATTRIBUTES)
FILE_FIELDS = tuple(name for name, _ in FILE_ATTRIBUTES)
TASK_FIELDS = tuple(name for name, _ in TASK_ATTRIBUTES)

# Identifier sequences in a table, the same on both backends: jediTaskID starts at 10,000,000
# (pbook reads smaller numbers as request ids); PandaIDs at 1.
id_sequences = sa.Table(
    "id_sequences",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("next_value", sa.BigInteger, nullable=False),
)

tasks = sa.Table(
    "tasks",
    metadata,
    *(
        sa.Column(name, _column_type(code), primary_key=name == "jediTaskID", autoincrement=False)
        for name, code in TASK_ATTRIBUTES
    ),
    # Not part of the PanDA record: the submitted parameters, the refined job parameter template
    # and the submitter's DN (becomes prodUserID of the jobs).
    sa.Column("task_params", sa.Text, nullable=False),
    sa.Column("job_params_template", sa.Text, nullable=True),
    sa.Column("submitter_dn", sa.String(1024), nullable=True),
    sa.Index("ix_tasks_status", "status"),
    sa.Index("ix_tasks_user", "userName", "modificationTime"),
)

# JEDI datasets of a task (inputs, pseudo inputs, outputs, logs); outputs carry their filename
# template and the next serial number, which is never reused.
task_datasets = sa.Table(
    "task_datasets",
    metadata,
    sa.Column(
        "datasetID", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("jediTaskID", sa.BigInteger, nullable=False),
    sa.Column("datasetName", sa.String(255), nullable=False),
    sa.Column("containerName", sa.String(255), nullable=True),
    sa.Column("type", sa.String(20), nullable=False),
    sa.Column("creationTime", UTCDateTime, nullable=False),
    sa.Column("modificationTime", UTCDateTime, nullable=False),
    sa.Column("vo", sa.String(16), nullable=True),
    sa.Column("cloud", sa.String(10), nullable=True),
    sa.Column("site", sa.String(128), nullable=True),
    sa.Column("masterID", sa.BigInteger, nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("nFiles", sa.Integer, nullable=False, default=0),
    sa.Column("nFilesToBeUsed", sa.Integer, nullable=False, default=0),
    sa.Column("nFilesUsed", sa.Integer, nullable=False, default=0),
    sa.Column("nFilesFinished", sa.Integer, nullable=False, default=0),
    sa.Column("nFilesFailed", sa.Integer, nullable=False, default=0),
    sa.Column("nFilesOnHold", sa.Integer, nullable=False, default=0),
    sa.Column("nFilesMissing", sa.Integer, nullable=False, default=0),
    sa.Column("nEvents", sa.BigInteger, nullable=False, default=0),
    sa.Column("nEventsToBeUsed", sa.BigInteger, nullable=False, default=0),
    sa.Column("nEventsUsed", sa.BigInteger, nullable=False, default=0),
    sa.Column("attributes", sa.String(100), nullable=True),
    sa.Column("streamName", sa.String(20), nullable=True),
    sa.Column("storageToken", sa.String(60), nullable=True),
    sa.Column("destination", sa.String(60), nullable=True),
    sa.Column("filename_template", sa.String(256), nullable=True),
    sa.Column("serial_nr", sa.BigInteger, nullable=False, default=1),
    sa.Index("ix_task_datasets_task", "jediTaskID"),
)

# JEDI dataset contents: one row per input file or event chunk, and per planned output file.
task_files = sa.Table(
    "task_files",
    metadata,
    sa.Column(
        "fileID", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("jediTaskID", sa.BigInteger, nullable=False),
    sa.Column("datasetID", sa.BigInteger, nullable=False),
    sa.Column("creationDate", UTCDateTime, nullable=False),
    sa.Column("lastAttemptTime", UTCDateTime, nullable=True),
    sa.Column("lfn", sa.String(256), nullable=False),
    sa.Column("GUID", sa.String(64), nullable=True),
    sa.Column("type", sa.String(20), nullable=False),
    sa.Column("status", sa.String(64), nullable=False),
    sa.Column("fsize", sa.BigInteger, nullable=True),
    sa.Column("checksum", sa.String(40), nullable=True),
    sa.Column("scope", sa.String(30), nullable=True),
    sa.Column("attemptNr", sa.Integer, nullable=False, default=0),
    sa.Column("maxAttempt", sa.Integer, nullable=True),
    sa.Column("failedAttempt", sa.Integer, nullable=False, default=0),
    sa.Column("maxFailure", sa.Integer, nullable=True),
    sa.Column("nEvents", sa.BigInteger, nullable=True),
    sa.Column("keepTrack", sa.Integer, nullable=True),
    sa.Column("startEvent", sa.BigInteger, nullable=True),
    sa.Column("endEvent", sa.BigInteger, nullable=True),
    sa.Column("firstEvent", sa.BigInteger, nullable=True),
    sa.Column("PandaID", sa.BigInteger, nullable=True),
    sa.Column("outPandaID", sa.BigInteger, nullable=True),
    sa.Column("proc_status", sa.String(64), nullable=True),
    sa.Index("ix_task_files_dataset", "jediTaskID", "datasetID", "status"),
    sa.Index("ix_task_files_panda", "PandaID"),
    # The rows a job produces, read by the finaliser for every batch it ends.
    sa.Index("ix_task_files_out_panda", "outPandaID"),
)


def _job_columns() -> list[sa.Column[object]]:
    return [
        *(
            sa.Column(name, _column_type(code), primary_key=name == "PandaID", autoincrement=False)
            for name, code in JOB_ATTRIBUTES
        ),
        # Not part of the PanDA record: the pilot's final report, kept until the finaliser decides
        # the job's final status, and the first job of a retry chain (names the job).
        sa.Column("reported_status", sa.String(16), nullable=True),
        sa.Column("output_report", sa.Text, nullable=True),
        sa.Column("pilot_log", sa.Text, nullable=True),
        sa.Column("stdout", sa.Text, nullable=True),
        sa.Column("origin_panda_id", sa.BigInteger, nullable=True),
        # Reported by pilots (update_job mean_core_count, domain.md §5.4) but absent from the
        # record's attribute list (api-v1.md §3.10).
        sa.Column("meanCoreCount", sa.Integer, nullable=True),
    ]


jobs = sa.Table(
    "jobs",
    metadata,
    *_job_columns(),
    # Matches the dispatch order (priority descending, then PandaID) so a claim reads the first
    # rows of the index instead of sorting every activated job of the queue.
    sa.Index("ix_jobs_dispatch", "jobStatus", "computingSite", sa.desc("currentPriority"), "PandaID"),
    sa.Index("ix_jobs_task", "jediTaskID"),
    sa.Index("ix_jobs_status_time", "jobStatus", "modificationTime"),
    # The consumers of an event-service jobset, or the clones of a cloned job, found together.
    sa.Index("ix_jobs_jobset", "jobsetID"),
)

job_files = sa.Table(
    "job_files",
    metadata,
    *(
        sa.Column(
            name,
            sa.BigInteger().with_variant(sa.Integer, "sqlite") if code == "P" else _column_type(code),
            primary_key=code == "P",
            autoincrement=code == "P",
        )
        for name, code in FILE_ATTRIBUTES
    ),
    sa.Index("ix_job_files_panda", "PandaID"),
)

# Jobs in a final status move here (with their files) after a delay, so the active table, which
# dispatch and heartbeats read, stays as small as the work in flight (domain.md §10.4). Same
# columns as the active tables; the retention sweep reads by modificationTime.
jobs_archive = sa.Table(
    "jobs_archive",
    metadata,
    *_job_columns(),
    sa.Index("ix_jobs_archive_task", "jediTaskID"),
    # By modificationTime, for the retention sweep and the statistics' window of recent final jobs
    # (db/statistics.py). The statistics group by the other columns: holding them in the index lets
    # both databases count a window of the archive from the index alone, without a row lookup per
    # job (on SQLite that lookup was most of the time).
    sa.Index(
        "ix_jobs_archive_time",
        "modificationTime",
        "prodSourceLabel",
        "jobStatus",
        "computingSite",
        "resource_type",
        "cloud",
        "processingType",
        "gshare",
    ),
)

job_files_archive = sa.Table(
    "job_files_archive",
    metadata,
    *(
        sa.Column(
            name,
            sa.BigInteger().with_variant(sa.Integer, "sqlite") if code == "P" else _column_type(code),
            primary_key=code == "P",
            autoincrement=False,
        )
        for name, code in FILE_ATTRIBUTES
    ),
    sa.Index("ix_job_files_archive_panda", "PandaID"),
)

# The worker-node catalog pilots report into (pilot/update_worker_node, update_worker_node_gpu).
worker_nodes = sa.Table(
    "worker_nodes",
    metadata,
    sa.Column("site", sa.String(128), primary_key=True),
    sa.Column("host_name", sa.String(128), primary_key=True),
    sa.Column("cpu_model", sa.String(128), primary_key=True),
    sa.Column("cpu_model_normalized", sa.String(128), nullable=True),
    sa.Column("n_logical_cpus", sa.Integer, nullable=True),
    sa.Column("n_sockets", sa.Integer, nullable=True),
    sa.Column("cores_per_socket", sa.Integer, nullable=True),
    sa.Column("threads_per_core", sa.Integer, nullable=True),
    sa.Column("cpu_architecture", sa.String(20), nullable=True),
    sa.Column("cpu_architecture_level", sa.String(20), nullable=True),
    sa.Column("clock_speed", sa.Float, nullable=True),
    sa.Column("total_memory", sa.BigInteger, nullable=True),
    sa.Column("total_local_disk", sa.BigInteger, nullable=True),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
)

worker_node_queues = sa.Table(
    "worker_node_queues",
    metadata,
    sa.Column("site", sa.String(128), primary_key=True),
    sa.Column("host_name", sa.String(128), primary_key=True),
    sa.Column("panda_queue", sa.String(128), primary_key=True),
    sa.Column("last_seen", UTCDateTime, nullable=False),
)

worker_node_gpus = sa.Table(
    "worker_node_gpus",
    metadata,
    sa.Column("site", sa.String(128), primary_key=True),
    sa.Column("host_name", sa.String(128), primary_key=True),
    sa.Column("vendor", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("vram", sa.BigInteger, nullable=True),
    sa.Column("architecture", sa.String(64), nullable=True),
    sa.Column("framework", sa.String(64), nullable=True),
    sa.Column("framework_version", sa.String(64), nullable=True),
    sa.Column("driver_version", sa.String(64), nullable=True),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
)

# Harvester workers (upstream's HARVESTER_WORKERS, domain.md §8.1), keyed by instance and worker.
harvester_workers = sa.Table(
    "harvester_workers",
    metadata,
    sa.Column("harvesterID", sa.String(50), primary_key=True),
    sa.Column("workerID", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("batchID", sa.String(80), nullable=True),
    sa.Column("queueName", sa.String(80), nullable=True),
    sa.Column("status", sa.String(80), nullable=True),
    sa.Column("computingSite", sa.String(128), nullable=True),
    sa.Column("nCore", sa.Integer, nullable=True),
    sa.Column("nodeID", sa.String(80), nullable=True),
    sa.Column("submitTime", UTCDateTime, nullable=True),
    sa.Column("startTime", UTCDateTime, nullable=True),
    sa.Column("endTime", UTCDateTime, nullable=True),
    sa.Column("stdOut", sa.String(250), nullable=True),
    sa.Column("stdErr", sa.String(250), nullable=True),
    sa.Column("batchLog", sa.String(250), nullable=True),
    sa.Column("jdl", sa.String(250), nullable=True),
    sa.Column("resourceType", sa.String(56), nullable=True),
    sa.Column("nativeExitCode", sa.Integer, nullable=True),
    sa.Column("nativeStatus", sa.String(80), nullable=True),
    sa.Column("diagMessage", sa.String(500), nullable=True),
    sa.Column("nJobs", sa.Integer, nullable=True),
    sa.Column("computingElement", sa.String(128), nullable=True),
    sa.Column("submissionHost", sa.String(128), nullable=True),
    sa.Column("harvesterHost", sa.String(128), nullable=True),
    sa.Column("errorCode", sa.Integer, nullable=True),
    sa.Column("jobType", sa.String(80), nullable=True),
    sa.Column("minRamCount", sa.Integer, nullable=True),
    sa.Column("pilotStatus", sa.String(80), nullable=True),
    sa.Column("pilotStartTime", UTCDateTime, nullable=True),
    sa.Column("pilotEndTime", UTCDateTime, nullable=True),
    sa.Column("lastUpdate", UTCDateTime, nullable=False),
    sa.Index("ix_harvester_workers_site", "computingSite", "status"),
)

# Which jobs a Harvester worker runs (upstream's Harvester_Rel_Jobs_Workers).
worker_jobs = sa.Table(
    "worker_jobs",
    metadata,
    sa.Column("harvesterID", sa.String(50), primary_key=True),
    sa.Column("workerID", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("PandaID", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("lastUpdate", UTCDateTime, nullable=False),
    sa.Index("ix_worker_jobs_panda", "PandaID"),
)

# Event ranges of event-service tasks (upstream's JEDI_Events, domain.md §7.1). ``PandaID`` is the
# jobset's id while a range waits (``ready``) and the consumer's once handed out; jobset ids come
# from the PandaID sequence but no job gets them, so the two never collide. ``attemptNr`` counts
# the attempts left: a range is handed out only while it is above 0. A range is named to pilots
# by ``<jediTaskID>-<PandaID>-<fileID>-<job_processID>-<attemptNr>``.
events = sa.Table(
    "events",
    metadata,
    sa.Column(
        "row_ID", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("jediTaskID", sa.BigInteger, nullable=False),
    sa.Column("datasetID", sa.BigInteger, nullable=False),
    sa.Column("PandaID", sa.BigInteger, nullable=False),
    sa.Column("jobsetID", sa.BigInteger, nullable=False),
    sa.Column("fileID", sa.BigInteger, nullable=False),
    sa.Column("job_processID", sa.BigInteger, nullable=False),
    sa.Column("attemptNr", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("def_min_eventID", sa.BigInteger, nullable=False),
    sa.Column("def_max_eventID", sa.BigInteger, nullable=False),
    sa.Column("processed_upto_eventID", sa.BigInteger, nullable=True),
    sa.Column("objstore_ID", sa.BigInteger, nullable=True),
    sa.Column("error_code", sa.Integer, nullable=True),
    sa.Column("error_diag", sa.String(500), nullable=True),
    sa.Column("path_convention", sa.Integer, nullable=True),
    sa.Column("zipRow_ID", sa.BigInteger, nullable=True),
    sa.Column("is_jumbo", sa.Boolean, nullable=False, default=False),
    sa.Column("core_count", sa.Integer, nullable=True),
    sa.Column("cpu_consumption_time", sa.Float, nullable=True),
    sa.Column("modificationTime", UTCDateTime, nullable=False),
    # acquire_event_ranges: the ready ranges of a jobset (PandaID = jobsetID) in order; a
    # consumer's ranges for updates and post-processing; a task's ranges for jumbo jobs and counts.
    sa.Index("ix_events_holder", "PandaID", "status", "fileID", "job_processID"),
    sa.Index("ix_events_task", "jediTaskID", "status"),
    sa.Index("ix_events_jobset", "jobsetID", "status"),
)

# Harvester instances (upstream's HARVESTER_INSTANCES): one row per harvester_id, refreshed by
# every heartbeat. The named columns are the ones Bamboo reads; ``data`` keeps every key the
# instance sent, as it sent it.
harvester_instances = sa.Table(
    "harvester_instances",
    metadata,
    sa.Column("harvester_ID", sa.String(50), primary_key=True),
    sa.Column("owner", sa.String(256), nullable=True),
    sa.Column("hostName", sa.String(128), nullable=True),
    sa.Column("startTime", UTCDateTime, nullable=True),
    sa.Column("sw_version", sa.String(64), nullable=True),
    sa.Column("commit_stamp", sa.String(100), nullable=True),
    sa.Column("description", sa.String(256), nullable=True),
    sa.Column("data", sa.JSON, nullable=True),
    sa.Column("lastUpdate", UTCDateTime, nullable=False),
)

# Worker counts a Harvester instance reports per queue (report_worker_statistics), replaced as a
# whole per (harvester, queue).
harvester_worker_stats = sa.Table(
    "harvester_worker_stats",
    metadata,
    sa.Column("harvester_ID", sa.String(50), primary_key=True),
    sa.Column("computingSite", sa.String(128), primary_key=True),
    sa.Column("jobType", sa.String(80), primary_key=True),
    sa.Column("resourceType", sa.String(56), primary_key=True),
    sa.Column("status", sa.String(80), primary_key=True),
    sa.Column("n_workers", sa.Integer, nullable=False),
    sa.Column("lastUpdate", UTCDateTime, nullable=False),
    sa.Index("ix_harvester_worker_stats_site", "computingSite"),
)

# Commands for Harvester instances (upstream's HARVESTER_COMMANDS): new -> retrieved ->
# acknowledged. ``params`` is JSON text.
harvester_commands = sa.Table(
    "harvester_commands",
    metadata,
    sa.Column(
        "command_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("harvester_ID", sa.String(50), nullable=False),
    sa.Column("command", sa.String(256), nullable=False),
    sa.Column("params", sa.Text, nullable=True),
    sa.Column("ack_requested", sa.Integer, nullable=False, default=0),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("creation_date", UTCDateTime, nullable=False),
    sa.Column("status_date", UTCDateTime, nullable=False),
    sa.Index("ix_harvester_commands_pick", "harvester_ID", "status", "creation_date"),
    sa.Index("ix_harvester_commands_name", "harvester_ID", "command"),
)

# Command locks a heartbeat registers (``commands`` in heartbeat data): which commands an instance
# wants for which queue and resource type.
harvester_command_locks = sa.Table(
    "harvester_command_locks",
    metadata,
    sa.Column("harvester_ID", sa.String(50), primary_key=True),
    sa.Column("command", sa.String(256), primary_key=True),
    sa.Column("computingSite", sa.String(128), primary_key=True),
    sa.Column("resourceType", sa.String(56), primary_key=True),
    sa.Column("lockedBy", sa.String(64), nullable=True),
    sa.Column("lockedTime", UTCDateTime, nullable=True),
    sa.Column("lastUpdate", UTCDateTime, nullable=False),
)

# Target slots per queue (upstream's HARVESTER_SLOTS); an empty string in gshare / resourceType
# stands for "any" so the key has no NULLs.
harvester_slots = sa.Table(
    "harvester_slots",
    metadata,
    sa.Column("pandaQueueName", sa.String(128), primary_key=True),
    sa.Column("gshare", sa.String(32), primary_key=True),
    sa.Column("resourceType", sa.String(56), primary_key=True),
    sa.Column("numSlots", sa.Integer, nullable=False),
    sa.Column("modificationTime", UTCDateTime, nullable=False),
    sa.Column("expirationTime", UTCDateTime, nullable=True),
)

# Service metrics (update_service_metrics) and dialogs (add_dialogs), stored as sent.
harvester_metrics = sa.Table(
    "harvester_metrics",
    metadata,
    sa.Column("harvester_ID", sa.String(50), primary_key=True),
    sa.Column("harvester_host", sa.String(128), primary_key=True),
    sa.Column("creation_time", UTCDateTime, primary_key=True),
    sa.Column("metrics", sa.Text, nullable=False),
)

harvester_dialogs = sa.Table(
    "harvester_dialogs",
    metadata,
    sa.Column("harvester_id", sa.String(50), primary_key=True),
    sa.Column("diagID", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("moduleName", sa.String(100), nullable=True),
    sa.Column("identifier", sa.String(100), nullable=True),
    sa.Column("creationTime", UTCDateTime, nullable=True),
    sa.Column("messageLevel", sa.String(10), nullable=True),
    sa.Column("diagMessage", sa.String(500), nullable=True),
)

# The local dataset catalog (data-management backend of the embedded server).
catalog_datasets = sa.Table(
    "catalog_datasets",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("scope", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The tape RSE holding the dataset when it is tape-resident (its files reach disk only by
    # staging, logic/carousel.py); NULL for a dataset on disk.
    sa.Column("tape_rse", sa.String(64), nullable=True),
)

catalog_files = sa.Table(
    "catalog_files",
    metadata,
    sa.Column("dataset", sa.String(255), primary_key=True),
    sa.Column("lfn", sa.String(256), primary_key=True),
    sa.Column("scope", sa.String(64), nullable=True),
    sa.Column("guid", sa.String(64), nullable=True),
    sa.Column("fsize", sa.BigInteger, nullable=True),
    sa.Column("checksum", sa.String(64), nullable=True),
    sa.Column("n_events", sa.BigInteger, nullable=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # False while the file of a tape-resident dataset has no disk copy (not staged yet).
    sa.Column("on_disk", sa.Boolean, nullable=False, server_default=sa.true()),
    # A dataset's files in order, and its last position when files are added (db/catalog.py): on
    # the primary key alone both read every file of the dataset.
    sa.Index("ix_catalog_files_position", "dataset", "position"),
)

# Lost-file recovery requests (file_server/upload_file_recovery_request), worked through by the
# recovery agent (logic/file_recovery.py). ``plan`` is the agent's progress as JSON: the tasks to
# re-run, oldest generation first, and how far it got; ``log_name`` the JEDI log it writes.
file_recovery_requests = sa.Table(
    "file_recovery_requests",
    metadata,
    sa.Column(
        "request_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("requester", sa.String(256), nullable=False),
    sa.Column("requester_dn", sa.String(1024), nullable=False),
    sa.Column("production", sa.Boolean, nullable=False),
    sa.Column("jediTaskID", sa.BigInteger, nullable=True),
    sa.Column("dataset", sa.String(255), nullable=True),
    sa.Column("files", sa.JSON, nullable=True),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("no_child_retry", sa.Boolean, nullable=False),
    sa.Column("resurrect_datasets", sa.Boolean, nullable=False),
    sa.Column("force", sa.Boolean, nullable=False),
    sa.Column("reproduce_parent", sa.Boolean, nullable=False),
    sa.Column("reproduce_upto_nth_gen", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("plan", sa.JSON, nullable=True),
    sa.Column("log_name", sa.String(128), nullable=False),
    sa.Column("message", sa.String(1000), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("modified_at", UTCDateTime, nullable=False),
    sa.Index("ix_file_recovery_requests_status", "status", "request_id"),
)

# Event-picking requests (file_server/upload_event_picking_request): the 12 string parameters as
# sent, resolved by the event-picking agent (logic/event_picking.py) into a task of the requester.
event_picking_requests = sa.Table(
    "event_picking_requests",
    metadata,
    sa.Column(
        "request_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("requester", sa.String(256), nullable=False),
    sa.Column("requester_dn", sa.String(1024), nullable=False),
    sa.Column("requester_fqans", sa.JSON, nullable=False),
    sa.Column("requester_vo", sa.String(64), nullable=True),
    sa.Column("production", sa.Boolean, nullable=False),
    sa.Column("run_event_list", sa.Text, nullable=False),
    sa.Column("data_type", sa.Text, nullable=False),
    sa.Column("stream_name", sa.Text, nullable=False),
    sa.Column("dataset_name", sa.Text, nullable=False),
    sa.Column("ami_tag", sa.Text, nullable=False),
    sa.Column("user_dataset_name", sa.Text, nullable=False),
    sa.Column("locked_by", sa.Text, nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("input_file_list", sa.Text, nullable=False),
    sa.Column("n_sites", sa.Text, nullable=False),
    sa.Column("user_task_name", sa.Text, nullable=False),
    sa.Column("ei_api", sa.Text, nullable=False),
    sa.Column("include_guids", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("jediTaskID", sa.BigInteger, nullable=True),
    sa.Column("message", sa.String(1000), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("modified_at", UTCDateTime, nullable=False),
    sa.Index("ix_event_picking_requests_status", "status", "request_id"),
)

# The task command queue (upstream's PRODSYS_COMM): at most one pending command per task; a new
# command replaces the previous one. The commando agent executes ``queued`` rows and marks them.
task_commands = sa.Table(
    "task_commands",
    metadata,
    sa.Column("jediTaskID", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("command", sa.String(32), nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("requester", sa.String(256), nullable=True),
    sa.Column("creationTime", UTCDateTime, nullable=False),
    sa.Column("modificationTime", UTCDateTime, nullable=False),
    sa.Index("ix_task_commands_status", "status", "creationTime"),
)

# The global share tree (upstream's GLOBAL_SHARES, domain.md §6.4), replaced as a whole by
# `bamboo share load`. ``position`` is the file order (parents before children), which is the
# order tasks are matched in; the selectors are regular expressions on task fields.
global_shares = sa.Table(
    "global_shares",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("parent", sa.String(32), nullable=True),
    sa.Column("position", sa.Integer, nullable=False, unique=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("prodsourcelabel", sa.String(256), nullable=True),
    sa.Column("workinggroup", sa.String(256), nullable=True),
    sa.Column("campaign", sa.String(256), nullable=True),
    sa.Column("processingtype", sa.String(256), nullable=True),
    sa.Column("transpath", sa.String(256), nullable=True),
    sa.Column("rtype", sa.String(256), nullable=True),
    sa.Column("vo", sa.String(256), nullable=True),
    sa.Column("queue_id", sa.Integer, nullable=True),
    sa.Column("throttled", sa.Boolean, nullable=False),
    sa.Column("is_default", sa.Boolean, nullable=False),
)

# Dispatch with shares picks the jobs of one share of a queue at a time (db/jobs.py _pick), in
# priority order: this index gives those rows first.
sa.Index(
    "ix_jobs_share_dispatch",
    jobs.c.jobStatus,
    jobs.c.computingSite,
    jobs.c.gshare,
    jobs.c.currentPriority.desc(),
    jobs.c.PandaID,
)

# The statistics endpoints count the non-final jobs on every call (those counts are current). On
# SQLite that was a row lookup per job for the columns they group by; this index holds them, for
# the non-final jobs only. SQLite writes an index only when one of its columns changes, so
# heartbeats (modificationTime) never touch it. PostgreSQL counts them by a sequential scan instead:
# there every heartbeat already writes a new entry in each index of its job, and this one would add
# to that (docs/architecture.md, "Job statistics").
STATISTICS_FINAL_STATUSES = ("cancelled", "closed", "failed", "finished")
sa.Index(
    "ix_jobs_statistics",
    jobs.c.jobStatus,
    jobs.c.computingSite,
    jobs.c.resource_type,
    jobs.c.prodSourceLabel,
    jobs.c.cloud,
    jobs.c.processingType,
    jobs.c.gshare,
    sqlite_where=jobs.c.jobStatus.not_in(STATISTICS_FINAL_STATUSES),
).ddl_if(dialect="sqlite")

# The final jobs of both job tables counted per statistics window and group: for each window, the
# jobs whose modificationTime is in the (since, upto] its job_stats_windows row names. Kept by the
# statistics agent (logic/statistics.py); the endpoints add the jobs outside that range.
# group_key encodes the group's columns, null included, so a group has one row to add to.
job_stats_totals = sa.Table(
    "job_stats_totals",
    metadata,
    sa.Column("window_minutes", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("group_key", sa.Text, primary_key=True),
    sa.Column("computingSite", sa.String(128), nullable=True),
    sa.Column("cloud", sa.String(50), nullable=True),
    sa.Column("prodSourceLabel", sa.String(20), nullable=True),
    sa.Column("resource_type", sa.String(56), nullable=True),
    sa.Column("processingType", sa.String(64), nullable=True),
    sa.Column("gshare", sa.String(32), nullable=True),
    sa.Column("jobStatus", sa.String(15), nullable=False),
    sa.Column("n", sa.BigInteger, nullable=False),
    # SQLite stores the rows in key order, so a window's rows are read as one range, without a
    # lookup per row from the key's index into the table.
    sqlite_with_rowid=False,
)
job_stats_windows = sa.Table(
    "job_stats_windows",
    metadata,
    sa.Column("window_minutes", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("upto", UTCDateTime, nullable=False),
    sa.Column("rebuilt_at", UTCDateTime, nullable=False),
)

# Live Bamboo processes (each `bamboo serve` worker, each `bamboo agents`): a row per process,
# renewed by its heartbeat; async_process requests go to the processes whose heartbeat is fresh.
machines = sa.Table(
    "machines",
    metadata,
    sa.Column("machine_name", sa.String(320), primary_key=True),
    sa.Column("service_name", sa.String(64), nullable=False),
    sa.Column("host_name", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Index("ix_machines_service", "service_name", "heartbeat_at"),
)

# async_process requests: grep (one result row per expected machine, made at submission) and
# sleep_echo (run by the one machine that claimed it, ``claimed_by``; ``attempts`` counts claims).
async_requests = sa.Table(
    "async_requests",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("requester", sa.String(256), nullable=False),
    sa.Column("access", sa.String(16), nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("service_name", sa.String(64), nullable=True),
    sa.Column("machine_name", sa.String(320), nullable=True),
    sa.Column("expected_machines", sa.JSON, nullable=False),
    sa.Column("claimed_by", sa.String(320), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_async_requests_claim", "kind", "service_name", "claimed_by"),
    sa.Index("ix_async_requests_created", "created_at"),
)

# What each machine did for a request: pending -> running -> done | failed.
async_request_results = sa.Table(
    "async_request_results",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("machine_name", sa.String(320), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("truncated", sa.Boolean, nullable=False),
    sa.Column("error_msg", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("stderr", sa.Text, nullable=True),
    sa.Column("return_code", sa.Integer, nullable=True),
    sa.Index("ix_async_request_results_machine", "machine_name", "status"),
    sa.Index("ix_async_request_results_status", "status"),
)

# Workflows (api-v1.md §2.13): a stored request or definition that the workflow agent turns into
# tasks. ``kind`` says which endpoint stored it (``raw`` for submit_workflow_raw_request and
# upload_workflow_request, ``definition`` for submit_workflow); ``request`` is its JSON text.
# ``owner_dn`` is the submitter's DN: the tasks of the workflow are submitted in its name.
workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column(
        "workflow_id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("name", sa.String(256), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("owner_dn", sa.String(512), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("error_dialog", sa.String(500), nullable=True),
    sa.Column("creation_time", UTCDateTime, nullable=False),
    sa.Column("modification_time", UTCDateTime, nullable=False),
    # The agent claims the registered and running workflows.
    sa.Index("ix_workflows_status", "status", "workflow_id"),
)

# One row per step whose task was created, written in the transaction that creates the task: the
# primary key is what makes a rerun of the agent unable to create a step's task twice.
# ``task_ended`` is set once the agent has seen the task end, so it claims a running workflow
# only when one of its tasks ended since it last looked.
workflow_steps = sa.Table(
    "workflow_steps",
    metadata,
    sa.Column("workflow_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("step_name", sa.String(64), primary_key=True),
    sa.Column("jediTaskID", sa.BigInteger, nullable=False, unique=True),
    sa.Column("task_ended", sa.Boolean, nullable=False),
    sa.Column("creation_time", UTCDateTime, nullable=False),
    sa.Index("ix_workflow_steps_open", "task_ended", "workflow_id"),
)

# Registered cache files (upstream's userCacheUsage): who uploaded which sandbox, its size and the
# gzip CRC32 panda-client compares to reuse a sandbox instead of uploading it again. One row per
# (host, file name); the cleaner deletes a row with its file.
cache_files = sa.Table(
    "cache_files",
    metadata,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("file_name", sa.String(255), primary_key=True),
    sa.Column("user_name", sa.String(256), nullable=False),
    sa.Column("file_size", sa.BigInteger, nullable=False),
    sa.Column("checksum", sa.String(32), nullable=True),
    sa.Column("creation_time", UTCDateTime, nullable=False),
    # validate_cache_file: the caller's file of this size and checksum; the quota sums per user.
    sa.Index("ix_cache_files_user", "user_name", "file_size", "checksum"),
    # The cleaner: rows by age.
    sa.Index("ix_cache_files_created", "creation_time"),
)

# Data carousel (domain.md §9.3): staging requests of tape-resident datasets and the tasks
# waiting for them (logic/carousel.py).
data_carousel_requests = sa.Table(
    "data_carousel_requests",
    metadata,
    sa.Column(
        "request_id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("dataset", sa.String(255), nullable=False),
    sa.Column("source_rse", sa.String(64), nullable=True),
    sa.Column("destination_rse", sa.String(64), nullable=True),
    sa.Column("ddm_rule_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("total_files", sa.Integer, nullable=False),
    sa.Column("staged_files", sa.Integer, nullable=False),
    sa.Column("dataset_size", sa.BigInteger, nullable=False),
    sa.Column("staged_size", sa.BigInteger, nullable=False),
    sa.Column("creation_time", UTCDateTime, nullable=False),
    sa.Column("start_time", UTCDateTime, nullable=True),
    sa.Column("end_time", UTCDateTime, nullable=True),
    sa.Column("modification_time", UTCDateTime, nullable=False),
    sa.Column("check_time", UTCDateTime, nullable=True),
    sa.Column("source_tape", sa.String(64), nullable=True),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("last_staged_time", UTCDateTime, nullable=True),
    # Reuse looks up a dataset's reusable request; the agent its queued and staging ones.
    sa.Index("ix_data_carousel_requests_dataset", "dataset", "status"),
    sa.Index("ix_data_carousel_requests_status", "status", "request_id"),
)

data_carousel_relations = sa.Table(
    "data_carousel_relations",
    metadata,
    sa.Column("request_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("task_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Index("ix_data_carousel_relations_task", "task_id"),
)

# The tape simulator's replication rules (logic/tape_simulator.py): the state an external DDM
# (Rucio) would keep. Progress is computed from the rule's start and its frozen parameters.
tape_rules = sa.Table(
    "tape_rules",
    metadata,
    sa.Column("rule_id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(255), nullable=False),
    sa.Column("source_rse", sa.String(64), nullable=True),
    sa.Column("destination_rse", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
)
