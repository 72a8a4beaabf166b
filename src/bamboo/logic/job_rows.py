"""The job columns every job a task generates has in common (domain.md §4.6).

Run jobs (the generator), build jobs (``build_jobs``) and merge jobs (``merge_jobs``) start from
:func:`task_job_row` and set what is theirs: inputs, outputs, labels.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from bamboo.logic.catalog import scope_of
from bamboo.logic.jobparams import output_file_name
from bamboo.logic.task_admin import parse_split_rule
from bamboo.logic.taskparams import ALT_STAGE_OUT_MODES, ALT_STAGE_OUT_TAG

_HOME_VERSION = re.compile(r"-(\d+\.)")


#: Split-rule tag of tasks with ``useSecrets``; their jobs get the ``specialHandling`` token that
#: makes dispatch send the owner's secrets (logic/secrets.py).
USE_SECRETS_TAG = "ST"
USE_SECRETS_TOKEN = "us"  # noqa: S105 - a specialHandling token, not a secret


#: The ``specialHandling`` token (domain.md §4.6) a job carries for each pilot-flag split-rule
#: tag of its task (taskparams.PILOT_FLAG_TAGS); dispatch turns it into a job-dict key.
PILOT_FLAG_TOKENS = {
    "LC": "lc",
    "WF": "wf",
    "PO": "po",
    "NC": "nc",
    "IF": "if",
    "UT": "up",
    "HO": "ho",
    "OM": "om",
}
#: Jobs of a task with altStageOut carry ``ao:<mode>`` (on, off, force).
ALT_STAGE_OUT_PREFIX = "ao:"
#: Jobs placed at a queue whose schedconfig has ``use_vp`` (virtual placement) carry this token.
USE_VP_TOKEN = "vp"  # noqa: S105 - a specialHandling token, not a secret
#: Output datasets flagged ``an``: their files may be missing at the job's end. A job's output
#: file carries the flag in its (otherwise unused) dispatchDBlockToken, as PanDA's file specs do.
ALLOW_NO_OUTPUT = "an"


def uses_secrets(task: dict[str, Any]) -> bool:
    return f"{USE_SECRETS_TAG}=1" in (task.get("splitRule") or "").split(",")


def special_handling(task: dict[str, Any], queue: dict[str, Any]) -> str | None:
    """The ``specialHandling`` tokens a new job of ``task`` at ``queue`` starts with."""
    rules = parse_split_rule(task.get("splitRule"))
    tokens = [USE_SECRETS_TOKEN] if rules.get(USE_SECRETS_TAG) == "1" else []
    tokens.extend(token for tag, token in PILOT_FLAG_TOKENS.items() if rules.get(tag) == "1")
    code = rules.get(ALT_STAGE_OUT_TAG)
    tokens.extend(ALT_STAGE_OUT_PREFIX + mode for mode, value in ALT_STAGE_OUT_MODES.items() if value == code)
    if queue.get("use_vp") is True:
        tokens.append(USE_VP_TOKEN)
    return ",".join(tokens) or None


def allows_no_output(dataset: dict[str, Any]) -> bool:
    return ALLOW_NO_OUTPUT in (dataset.get("attributes") or "").split(",")


def task_job_row(
    task: dict[str, Any],
    queue: dict[str, Any],
    *,
    panda_id: int,
    origin: int,
    attempt: int,
    cores: int,
    memory: int,
    resource_type: str,
    parameters: str,
    now: Any,
) -> dict[str, Any]:
    """An activated job of ``task`` at ``queue`` without inputs or outputs."""
    home = task["transHome"]
    return {
        "PandaID": panda_id,
        "jobDefinitionID": task["reqID"],
        "creationTime": now,
        "creationHost": "bamboo",
        "modificationTime": now,
        "AtlasRelease": task["transUses"],
        "transformation": task["transPath"],
        # PanDA ships "Pkg-1.2.3" cache names as "Pkg/1.2.3".
        "homepackage": _HOME_VERSION.sub(r"/\1", home) if home else home,
        "prodSourceLabel": task["prodSourceLabel"],
        "prodUserID": task["submitter_dn"],
        "assignedPriority": task["currentPriority"],
        "currentPriority": task["currentPriority"],
        "attemptNr": attempt,
        "maxAttempt": attempt,
        "jobStatus": "activated",
        "jobName": f"{task['taskName']}.{origin}",
        "maxCpuCount": 0,
        "maxDiskCount": 0,
        "minRamCount": memory,
        "minRamUnit": "MB",
        "computingSite": queue["name"],
        "jobParameters": parameters,
        "prodDBlock": None,
        "destinationDBlock": None,
        "destinationSE": queue["name"],
        "nEvents": 0,
        "cloud": queue.get("cloud"),
        "taskID": task["jediTaskID"],
        "cmtConfig": task["architecture"],
        "stateChangeTime": now,
        "lockedby": "jedi",
        "relocationFlag": 0,
        "VO": task["vo"],
        "workingGroup": task["workingGroup"],
        "processingType": task["processingType"],
        "prodUserName": task["userName"],
        "nInputFiles": 0,
        "countryGroup": task["countryGroup"],
        "jobsetID": task["reqID"],
        "coreCount": cores,
        "nInputDataFiles": 0,
        "inputFileBytes": 0,
        "jediTaskID": task["jediTaskID"],
        "reqID": task["reqID"],
        "maxWalltime": queue.get("maxtime") or 0,
        "eventService": 0,
        "failedAttempt": 0,
        "gshare": task["gshare"],
        "resource_type": resource_type,
        "container_name": task["container_name"],
        "job_label": "user" if task["taskType"] == "anal" else "managed",
        "origin_panda_id": origin,
        "specialHandling": special_handling(task, queue),
    }


def planned_outputs(
    datasets: Sequence[dict[str, Any]], first_serials: dict[int, int], index: int, task_id: int
) -> list[tuple[dict[str, Any], int, str]]:
    """(dataset, serial number, file name) of each output the ``index``-th job of a batch writes,
    from the serial numbers the batch reserved for each dataset."""
    planned = []
    for dataset in datasets:
        serial = first_serials[dataset["datasetID"]] + index
        planned.append(
            (dataset, serial, output_file_name(dataset["filename_template"], serial, task_id=task_id))
        )
    return planned


def planned_output_row(
    task_id: int, dataset: dict[str, Any], lfn: str, panda_id: int, now: Any
) -> dict[str, Any]:
    """The task's file row of one output a new job will write (``running`` until the job ends)."""
    return {
        "jediTaskID": task_id,
        "datasetID": dataset["datasetID"],
        "creationDate": now,
        "lfn": lfn,
        "type": dataset["type"],
        "status": "running",
        "scope": scope_of(dataset["datasetName"]),
        "attemptNr": 0,
        "failedAttempt": 0,
        # An unmerged file is tracked once it is a merge input (logic/merge_jobs.py).
        "keepTrack": None if dataset["type"] in _JOB_FILE_TYPES else 1,
        "outPandaID": panda_id,
    }


# Job files know outputs and logs only; an unmerged twin dataset's files are one or the other.
_JOB_FILE_TYPES = {"trn_output": "output", "trn_log": "log"}


def output_files(
    task_id: int,
    queue_name: str,
    panda_id: int,
    attempt: int,
    planned: Sequence[tuple[dict[str, Any], str, int]],
) -> list[dict[str, Any]]:
    """The job-file rows of a job's outputs: ``planned`` is (dataset, file name, fileID) per file."""
    return [
        {
            "PandaID": panda_id,
            "GUID": str(uuid.uuid4()),
            "lfn": lfn,
            "type": _JOB_FILE_TYPES.get(dataset["type"], dataset["type"]),
            "dataset": dataset["containerName"] or dataset["datasetName"],
            "status": "unknown",
            "destinationDBlock": dataset["datasetName"],
            "destinationDBlockToken": dataset["storageToken"],
            "dispatchDBlockToken": ALLOW_NO_OUTPUT if allows_no_output(dataset) else None,
            "destinationSE": queue_name,
            "scope": scope_of(dataset["datasetName"]),
            "jediTaskID": task_id,
            "datasetID": dataset["datasetID"],
            "fileID": file_id,
            "attemptNr": attempt,
        }
        for dataset, lfn, file_id in planned
    ]
