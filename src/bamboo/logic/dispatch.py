"""pilot/acquire_jobs: handing activated jobs to pilots and Harvester (api-v1.md §2.3, domain.md §5.3).

A job goes to at most one caller: the claim is a single UPDATE over a locked selection
(see :func:`bamboo.db.jobs.claim_activated`).

Queue statuses on the acquire side (domain.md §6.1): every status is served, because the status
says what brokerage may send to a queue, not whether the jobs already there may run (``brokeroff``
queues keep serving pilots, ``paused`` only stops the timeouts, and jobs still activated at an
``offline`` queue are left to re-brokerage). A ``test`` queue serves test jobs only: the labels
user, managed and unified are rewritten to ``test``.

Harvester's target slots steer what a queue takes (:mod:`bamboo.logic.target_slots`): no job of a
kind whose live target is 0 or reached, and no more per call than the smallest room left.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import harvester_commands as slots_db
from bamboo.db import jobs as jobs_db
from bamboo.db import queues as queues_db
from bamboo.db import workers as workers_db
from bamboo.db.jobs import ClaimStamp, DispatchFilter
from bamboo.logic import es_generation, es_lifecycle, job_rows, jobparams, secrets, shares, target_slots
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput

MAX_JOBS_PER_CALL = 1000
NO_JOBS = "No jobs in PanDA"
USER_LABELS = ("user", "panda", "install")
PRODUCTION_LABELS = ("managed", "test", "prod_test", "install")
TEST_LABELS = ("prod_test", "install", "test")
# A test pilot with a CE also takes the site-validation (HammerCloud) jobs, whatever their label.
TEST_PROCESSING_TYPE = "gangarobot"
# Labels whose callers are told how many production jobs the queue has sent (nSent), and the
# most that count goes to (it is read on every such call, so its cost stays bounded).
N_SENT_LABELS = ("managed", "test")
MAX_N_SENT = 1_000
# Length of the harvesterID column of the worker tables.
MAX_HARVESTER_ID = 50


@dataclass(frozen=True, slots=True)
class AcquireRequest:
    site_name: str
    prod_source_label: str | None = None
    n_jobs: int = 1
    memory: int | None = None
    disk_space: int | None = None
    remaining_time: int | None = None
    resource_type: str | None = None
    task_id: int | None = None
    node: str | None = None
    computing_element: str | None = None
    scheduler_id: str | None = None
    user_name: str | None = None
    background: bool = False
    harvester_id: str | None = None
    worker_id: int | None = None


def labels_for(label: str | None, computing_element: str | None) -> tuple[str, ...]:
    """The prodSourceLabels a request with this label may receive (api-v1.md §2.3)."""
    if label == "user":
        return USER_LABELS
    if label in (None, "managed"):
        return PRODUCTION_LABELS
    if label == "unified":
        return (*PRODUCTION_LABELS, "user", "panda")
    if label == "test" and computing_element:
        return TEST_LABELS
    return (label,)


def seconds(value: Any) -> int | None:
    """``remaining_time`` as sent (it has no declared type upstream): a number or numeric text;
    anything else counts as not given."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(number)


def _positive(value: int | None) -> int:
    return value if value and value > 0 else 0


class QueueStatusCache:
    """Queue statuses and the global share order for dispatch, re-read at most every
    ``ttl_seconds``.

    Every acquire needs its queue's status (a ``test`` queue hands out test jobs only) and the
    order in which shares are served; both change slowly, so one query every few seconds replaces
    one per call. A share order a few seconds old only delays a share's turn by that much.
    """

    def __init__(self, ttl_seconds: float = 5.0) -> None:
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, str | None]] = {}
        self._share_order: tuple[float, shares.ShareOrder] | None = None
        self._slots: dict[str, tuple[float, tuple[target_slots.SlotRow, ...]]] = {}

    async def status(self, conn: AsyncConnection, queue: str) -> str | None:
        now = time.monotonic()
        entry = self._entries.get(queue)
        if entry is None or now - entry[0] > self._ttl:
            if len(self._entries) > 10_000:
                self._entries.clear()
            entry = (now, await queues_db.status_of(conn, queue))
            self._entries[queue] = entry
        return entry[1]

    async def share_order(self, conn: AsyncConnection, queue: str) -> tuple[str, ...]:
        """The shares waiting at ``queue``, most under-used first (:mod:`bamboo.logic.shares`)."""
        now = time.monotonic()
        if self._share_order is None or now - self._share_order[0] > self._ttl:
            self._share_order = (now, await shares.dispatch_order(conn))
        return self._share_order[1].for_site(queue)

    async def slots(self, conn: AsyncConnection, queue: str) -> tuple[target_slots.SlotRow, ...]:
        """The queue's target slot rows (Harvester's add_target_slots), expired ones included: the
        caller judges expiry by its clock. Most queues have none, so this costs nothing per call."""
        now = time.monotonic()
        entry = self._slots.get(queue)
        if entry is None or now - entry[0] > self._ttl:
            if len(self._slots) > 10_000:
                self._slots.clear()
            entry = (now, target_slots.rows_from(await slots_db.slots_of(conn, queue)))
            self._slots[queue] = entry
        return entry[1]

    def forget_slots(self, queue: str) -> None:
        """Drop a queue's cached slot rows (this process just changed them)."""
        self._slots.pop(queue, None)


async def acquire(
    conn: AsyncConnection,
    clock: Clock,
    request: AcquireRequest,
    statuses: QueueStatusCache,
    secrets_to_send: SecretsToSend | None = None,
) -> list[dict[str, Any]]:
    """Claim up to ``n_jobs`` matching activated jobs for the caller; return their job dicts.

    Jobs of the most under-used global share go first, then by priority (domain.md §5.3, §6.4).
    With ``secrets_to_send`` (production callers), the dicts carry ``secrets`` and
    ``pilotSecrets`` (domain.md §9.2), and ``credname``/``myproxy`` when proxy keys were asked for.
    """
    worker = None
    if request.harvester_id and request.worker_id is not None:
        if len(request.harvester_id) > MAX_HARVESTER_ID:
            raise InvalidInput(f"harvester_id must be at most {MAX_HARVESTER_ID} characters")
        worker = (request.harvester_id, request.worker_id)
    label = request.prod_source_label
    if label in ("user", "managed", "unified") and await statuses.status(conn, request.site_name) == "test":
        label = "test"
    labels = labels_for(label, request.computing_element)
    limit = max(1, min(request.n_jobs, MAX_JOBS_PER_CALL))
    excluded: tuple[tuple[str, str], ...] = ()
    slot_rows = await statuses.slots(conn, request.site_name)
    if slot_rows:
        limits = await target_slots.dispatch_limits(conn, request.site_name, slot_rows, clock.now())
        if limits.closed:
            return []
        excluded = limits.blocked
        if limits.budget is not None:
            limit = min(limit, limits.budget)
    test_with_ce = label == "test" and bool(request.computing_element)
    selection = DispatchFilter(
        site=request.site_name,
        labels=labels,
        memory=_positive(request.memory),
        disk_space=_positive(request.disk_space),
        remaining_time=_positive(request.remaining_time),
        resource_type=request.resource_type,
        task_id=request.task_id,
        user_name=request.user_name,
        background=bool(request.background),
        also_processing_type=TEST_PROCESSING_TYPE if test_with_ce else None,
        share_order=await statuses.share_order(conn, request.site_name),
        excluded=excluded,
    )
    # Counted before the claim: the jobs sent earlier and not yet heard of.
    n_sent = 0
    if label in (None, "managed"):
        n_sent = await jobs_db.count_sent(conn, request.site_name, N_SENT_LABELS, MAX_N_SENT)
    stamp = ClaimStamp(
        now=clock.now(),
        node=request.node[:128] if request.node else None,
        computing_element=request.computing_element[:128] if request.computing_element else None,
        scheduler_id=request.scheduler_id[:128] if request.scheduler_id else None,
    )
    claimed = await jobs_db.claim_activated(conn, selection, limit, stamp)
    if any(job["eventService"] == es_lifecycle.CLONE for job in claimed):
        # runonce clones race for their jobset's semaphore; the losers are not handed out.
        claimed = await es_lifecycle.run_once(conn, claimed, stamp.now)
    if not claimed:
        return []
    panda_ids = [job["PandaID"] for job in claimed]
    if worker is not None:
        await workers_db.relate_jobs(conn, *worker, panda_ids, stamp.now)
    files = await jobs_db.files_of(conn, panda_ids)
    described = [job_dict(job, files[job["PandaID"]], n_sent) for job in claimed]
    if secrets_to_send is not None:
        extras = await secrets.secrets_for_jobs(
            conn, secrets_to_send.keyring, claimed, secrets_to_send.pilot_owner
        )
        for description, extra in zip(described, extras, strict=True):
            description.update(extra)
        if secrets_to_send.proxy_keys_from is not None:
            keys = await secrets.proxy_keys_for_jobs(conn, claimed, secrets_to_send.proxy_keys_from)
            for description, key in zip(described, keys, strict=True):
                description.update(key)
    return described


@dataclass(frozen=True)
class SecretsToSend:
    """What a production acquire needs to hand out secrets: the keyring that opens them, the
    owner of the pilot-level secrets (None: no ``pilotSecrets``) and, when the caller asked for
    proxy keys, the server base their ``myproxy`` names (None: no ``credname``/``myproxy``)."""

    keyring: secrets.Keyring
    pilot_owner: str | None
    proxy_keys_from: str | None = None


def _joined(files: Sequence[dict[str, Any]], key: str) -> str:
    return ",".join("" if f[key] is None else str(f[key]) for f in files)


def _text(value: Any) -> Any:
    # Unset attributes travel as the string NULL, as PanDA's job specs have them.
    return "NULL" if value is None else value


def job_dict(job: dict[str, Any], files: Sequence[dict[str, Any]], n_sent: int = 0) -> dict[str, Any]:
    """The job description a pilot runs from (clients.md §3.4; comma-joined file fields).

    ``n_sent``: for production requests, how many managed/test jobs the queue had already sent
    and not yet heard of when this one was claimed (capped at ``MAX_N_SENT``); 0 otherwise.
    """
    seen: set[str] = set()
    inputs = []
    for f in files:
        if f["type"] in ("input", "pseudo_input") and f["lfn"] not in seen:
            seen.add(f["lfn"])
            inputs.append(f)
    outputs = [f for f in files if f["type"] in ("output", "log")]
    data_outputs = [f for f in outputs if f["type"] == "output"]
    log = next((f for f in outputs if f["type"] == "log"), None)
    description: dict[str, Any] = {
        "StatusCode": 0,
        "PandaID": job["PandaID"],
        "prodSourceLabel": job["prodSourceLabel"],
        "swRelease": _text(job["AtlasRelease"]),
        "homepackage": _text(job["homepackage"]),
        "transformation": _text(job["transformation"]),
        "jobName": job["jobName"],
        "jobDefinitionID": job["jobDefinitionID"] or 0,
        "cloud": _text(job["cloud"]),
        "inFiles": _joined(inputs, "lfn"),
        "dispatchDblock": _joined(inputs, "dispatchDBlock"),
        "dispatchDBlockToken": _joined(inputs, "dispatchDBlockToken"),
        "dispatchDBlockTokenForOut": _joined(outputs, "dispatchDBlockToken"),
        "outFiles": _joined(outputs, "lfn"),
        "destinationDblock": _joined(outputs, "destinationDBlock"),
        "destinationDBlockToken": _joined(outputs, "destinationDBlockToken"),
        "prodDBlocks": _joined(inputs, "prodDBlock"),
        "prodDBlockToken": _joined(inputs, "prodDBlockToken"),
        "prodDBlockTokenForOutput": _joined(outputs, "prodDBlockToken"),
        "realDatasets": _joined(outputs, "dataset"),
        "realDatasetsIn": _joined(inputs, "dataset"),
        "fileDestinationSE": _joined(outputs, "destinationSE"),
        "logFile": log["lfn"] if log else "NULL",
        "logGUID": log["GUID"] if log else "NULL",
        "jobPars": job["jobParameters"] or "",
        "attemptNr": job["attemptNr"],
        "GUID": _joined(inputs, "GUID"),
        "checksum": _joined(inputs, "checksum"),
        "fsize": _joined(inputs, "fsize"),
        "scopeIn": _joined(inputs, "scope"),
        "scopeOut": _joined(data_outputs, "scope"),
        "scopeLog": log["scope"] if log and log["scope"] else "",
        "ddmEndPointIn": ",".join("" for _ in inputs),
        "ddmEndPointOut": ",".join("" for _ in outputs),
        "destinationSE": _text(job["destinationSE"]),
        "prodUserID": _text(job["prodUserID"]),
        "maxCpuCount": job["maxCpuCount"] or 0,
        "minRamCount": job["minRamCount"] or 0,
        "maxDiskCount": job["maxDiskCount"] or 0,
        "cmtConfig": _text(job["cmtConfig"]),
        "processingType": _text(job["processingType"]),
        "transferType": _text(job["transferType"]),
        "sourceSite": _text(job["sourceSite"]),
        "currentPriority": job["currentPriority"],
        "taskID": job["jediTaskID"] if job["jediTaskID"] is not None else "NULL",
        "coreCount": job["coreCount"] or 1,
        "jobsetID": job["jobsetID"] if job["jobsetID"] is not None else "NULL",
        "reqID": job["reqID"],
        "nucleus": _text(job["nucleus"]),
        "maxWalltime": job["maxWalltime"] or 0,
        "resource_type": _text(job["resource_type"]),
        "ioIntensity": job["diskIO"] or 0,
        "ioIntensityUnit": "kBPerS",
        "nSent": n_sent,
    }
    description.update(_event_service_keys(job))
    if job["container_name"]:
        description["container_name"] = job["container_name"]
    no_output = [f["lfn"] for f in outputs if f["dispatchDBlockToken"] == job_rows.ALLOW_NO_OUTPUT]
    if no_output:
        description["allowNoOutput"] = ",".join(no_output)
    if job["specialHandling"]:
        description.update(_flag_keys(job["specialHandling"].split(","), inputs))
    return description


# specialHandling tokens (logic/job_rows.py) the pilot is told of as the string "True".
_TRUE_FLAGS = {
    "debug": "debug",
    "po": "putLogToOS",
    "nc": "noExecStrCnv",
    "if": "inFilePosEvtNum",
    "up": "usePrefetcher",
    "ho": "isHPO",
    "om": "onSiteMerging",
    job_rows.USE_VP_TOKEN: "useVP",
}


def _flag_keys(tokens: Sequence[str], inputs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The conditional job-dict keys (api-v1.md §2.3) the job's specialHandling tokens ask for."""
    keys: dict[str, Any] = {_TRUE_FLAGS[token]: "True" for token in tokens if token in _TRUE_FLAGS}
    if "lc" in tokens:
        keys["loopingCheck"] = False
    for token in tokens:
        if token.startswith(job_rows.ALT_STAGE_OUT_PREFIX):
            keys["altStageOut"] = token.removeprefix(job_rows.ALT_STAGE_OUT_PREFIX)
    if "wf" in tokens and inputs:
        keys["writeToFile"] = _input_lists(inputs)
    return keys


def _input_lists(inputs: Sequence[dict[str, Any]]) -> str:
    """writeToFile: per input dataset, the ``tmpin_<dataset>`` name its ``${STREAM/F}`` placeholder
    became in the job parameters (logic/jobparams.py) and its LFNs: ``name:lfn,lfn^name:lfn``."""
    lists: dict[str, list[str]] = {}
    for f in inputs:
        lists.setdefault(f"tmpin_{jobparams.file_list_name(f['dataset'])}", []).append(f["lfn"])
    return "^".join(f"{name}:{','.join(lfns)}" for name, lfns in lists.items())


def _event_service_keys(job: dict[str, Any]) -> dict[str, str]:
    """The keys that tell the pilot what kind of event-service job it runs (api-v1.md §2.3):
    consumers and jumbo jobs take event ranges, merge jobs merge them, clones race each other."""
    kind = job["eventService"]
    if kind in (es_generation.JOB_ES_CONSUMER, es_generation.JOB_JUMBO):
        return {"eventService": "True"}
    if kind == es_generation.JOB_ES_MERGE:
        return {"eventServiceMerge": "True"}
    if kind == es_generation.JOB_CLONE:
        return {"cloneJob": es_generation.clone_mode(job) or "runonce"}
    return {}
