"""Validating a submitted task-parameter dict and refining it into a plan (domain.md §1).

:func:`validate` checks what a client sent before the task is stored; :func:`refine` turns the
stored dict into a :class:`RefinedTask`: the job-parameter template, the datasets with their
streams, the split rule and the retry and resource numbers the generator needs. Keys this
module does not know are allowed, because PanDA clients send many.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from bamboo.db.schema import tasks as tasks_table
from bamboo.logic.errors import InvalidInput
from bamboo.logic.jobparams import MAX_TEMPLATE_BYTES
from bamboo.logic.splitting import SplitRule

#: Largest accepted task-parameter document (checked by the caller on the raw body).
MAX_TASK_PARAMS_BYTES = 1024 * 1024

MAX_TASK_NAME_CHARS = 256
MAX_DATASET_NAME_CHARS = 255

#: prodSourceLabel values of the production group (api-v1.md §3.7): only production may submit them.
PRODUCTION_SOURCE_LABELS = frozenset({"managed", "prod_test"})

DEFAULT_MAX_ATTEMPT = 3

#: Dataset name of the pseudo master input of noInput and pfnList tasks.
PSEUDO_DATASET = "pseudo_dataset"

#: Stream of that pseudo master. The contract names ``IN`` for pfnList tasks, whose pseudo
#: files are the PFNs the job reads; plain noInput tasks use the same name so that every task
#: has its master on ``IN`` and a template cannot declare a second ``IN``.
PSEUDO_STREAM = "IN"

#: Dataset and stream name of the random-seed pseudo dataset.
RANDOM_SEED_STREAM = "RNDMSEED"

#: Stream of the sequence-number pseudo input (prun's ``%RNDM=N`` becomes ``${SEQNUMBER}`` over
#: the pseudo dataset ``seq_number``, offset N): each job gets the next number, from N + 1 on.
SEQUENCE_STREAM = "SEQNUMBER"

#: prodSourceLabel of a build job when ``buildSpec`` names none.
DEFAULT_BUILD_LABEL = "panda"

#: Prefix of an unmerged twin's dataset and file names, and of its stream and type (domain.md §1.5).
UNMERGED_PREFIX = "panda.um."
TRANSIENT_PREFIX = "TRN_"
TRANSIENT_TYPES = {"output": "trn_output", "log": "trn_log"}
#: Stream of the ``log_merge`` item: the merged log, written only by merge jobs.
LOG_MERGE_STREAM = "LOG_MERGE"

_ITEM_TYPES = frozenset({"constant", "template"})
_PARAM_TYPES = frozenset({"input", "pseudo_input", "output", "log", "number"})
_INPUT_TYPES = frozenset({"input", "pseudo_input"})
_NEEDS_DATASET = frozenset({"input", "output", "log"})

# Integer keys and the smallest value each may take (None: any integer).
_INT_KEYS: dict[str, int | None] = {
    "nEvents": 0,
    "nEventsPerJob": 1,
    "nFilesPerJob": 1,
    "nMaxFilesPerJob": 1,
    "nFiles": 0,
    "nEventsPerFile": 1,
    "nEventsPerInputFile": 1,
    "maxAttempt": 1,
    "maxFailure": 1,
    "coreCount": 0,
    "ramCount": 0,
    "baseRamCount": 0,
    # Upstream lets a negative walltime switch the looping check off.
    "walltime": None,
    "taskPriority": None,
    "parent_tid": 1,
    "nFilesPerMergeJob": 1,
    "nMaxFilesPerMergeJob": 1,
    "mergeRamCount": 0,
    "mergeCoreCount": 1,
    "nEventsPerWorker": 1,
    "nEsConsumers": 1,
    "maxAttemptES": 1,
    "maxAttemptEsJob": 1,
    "nJumboJobs": 0,
    "maxJumboPerSite": 1,
    "nSitesPerJob": 1,
}
# Boolean keys that change how the pilot runs the payload, and the split-rule tag each sets
# (domain.md §1.4); their jobs carry them to the pilot (logic/job_rows.py, logic/dispatch.py).
PILOT_FLAG_TAGS = {
    "noLoopingCheck": "LC",
    "writeInputToFile": "WF",
    "putLogToOS": "PO",
    "noExecStrCnv": "NC",
    "inFilePosEvtNum": "IF",
    "usePrefetcher": "UT",
    "hpoWorkflow": "HO",
    "onSiteMerging": "OM",
}
# altStageOut modes and their AT split-rule codes (domain.md §1.4).
ALT_STAGE_OUT_TAG = "AT"
ALT_STAGE_OUT_MODES = {"on": "1", "off": "2", "force": "3"}
_BOOL_KEYS = (
    "noInput",
    "disableAutoRetry",
    "mergeOutput",
    "umNameAtEnd",
    "allowPartialFinish",
    "decAttOnFailedES",
    "notDiscardEvents",
    *PILOT_FLAG_TAGS,
)
_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)
# Parameter keys stored in a task column of another name.
_COLUMN_ALIASES = {"ramCountUnit": "ramUnit"}
_OPTIONAL_STR_KEYS = ("site", "cloud", "sourceURL", "ramUnit", "ramCountUnit")

# Item flags that become dataset attribute tokens (domain.md §3.1).
_ATTRIBUTE_FLAGS = {
    "reusable": "ru",
    "random": "rd",
    "check": "cc",
    "usedup": "ud",
    "indexConsistent": "ic",
    "transient": "tr",
    "pseudo": "ps",
    "allowNoOutput": "an",
    "mergeOnly": "mo",
}

_STREAM_NAME = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_RANDOM_SEED = re.compile(r"\$\{RNDMSEED[/}]")
_FIRST_EVENT = re.compile(r"\$\{FIRSTEVENT[/}]")


@dataclass(frozen=True, kw_only=True)
class DatasetPlan:
    """One dataset the refined task reads or writes.

    ``type`` is ``input``, ``pseudo_input``, ``output``, ``log`` or ``random_seed``; ``stream``
    is the placeholder name jobs use for its files (``IN``, ``OUTPUT0``, ``LOG0``,
    ``RNDMSEED`` ...). ``offset`` skips that many input files, or for outputs and logs makes the
    first serial number ``offset + 1``. ``filename_template`` is set for outputs and logs.
    ``files`` lists explicit file names: the item's ``files``, or ``pfnList`` for the pseudo
    master. ``nfiles_per_job`` and ``ratio`` size a secondary input per job.
    """

    name: str
    type: str
    stream: str
    is_master: bool = False
    container: str | None = None
    offset: int = 0
    filename_template: str | None = None
    token: str | None = None
    destination: str | None = None
    include: str | None = None
    exclude: str | None = None
    files: tuple[str, ...] | None = None
    nfiles_per_job: int | None = None
    ratio: float | None = None
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildSpec:
    """The task's ``buildSpec`` (prun without ``--noBuild``; the build job is in build_jobs.py)."""

    archive_name: str
    job_parameters: str
    trans_path: str | None
    prod_source_label: str

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BuildSpec | None:
        """The build spec of a task, None without one.

        Raises:
            InvalidInput: ``buildSpec`` is not an object with string ``archiveName`` and
                ``jobParameters``.
        """
        spec = params.get("buildSpec")
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise InvalidInput("task parameter 'buildSpec' must be an object")
        for key in ("archiveName", "jobParameters"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise InvalidInput(f"task parameter 'buildSpec': {key!r} must be a non-empty string")
        for key in ("transPath", "prodSourceLabel"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise InvalidInput(f"task parameter 'buildSpec': {key!r} must be a string")
        return cls(
            archive_name=spec["archiveName"],
            job_parameters=spec["jobParameters"],
            trans_path=spec.get("transPath"),
            prod_source_label=spec.get("prodSourceLabel") or DEFAULT_BUILD_LABEL,
        )


@dataclass(frozen=True)
class MergeSpec:
    """The task's ``mergeSpec`` with ``mergeOutput`` (the merge jobs are in merge_jobs.py)."""

    job_parameters: str
    trans_path: str | None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MergeSpec | None:
        """The merge spec of a task that merges its outputs, None for one that does not.

        Raises:
            InvalidInput: ``mergeOutput`` without a ``mergeSpec`` object holding a string
                ``jobParameters``, or a ``transPath`` that is not a string.
        """
        if not params.get("mergeOutput"):
            return None
        spec = params.get("mergeSpec")
        if not isinstance(spec, Mapping):
            raise InvalidInput("task parameter 'mergeSpec' must be an object when mergeOutput is set")
        if not isinstance(spec.get("jobParameters"), str) or not spec["jobParameters"]:
            raise InvalidInput("task parameter 'mergeSpec': 'jobParameters' must be a non-empty string")
        if spec.get("transPath") is not None and not isinstance(spec["transPath"], str):
            raise InvalidInput("task parameter 'mergeSpec': 'transPath' must be a string")
        return cls(job_parameters=spec["jobParameters"], trans_path=spec.get("transPath"))


#: Task ``eventService`` values (domain.md §7): normal, event service, job cloning.
TASK_NORMAL, TASK_EVENT_SERVICE, TASK_JOB_CLONING = 0, 1, 2
#: ``useJobCloning`` modes and their ``UC`` split-rule codes (api-v1.md §3.7).
CLONING_MODES = {"runonce": 1, "storeonce": 2}
DEFAULT_ES_CONSUMERS = 1
DEFAULT_MAX_ATTEMPT_ES = 10
DEFAULT_MAX_ATTEMPT_ES_JOB = 3
DEFAULT_SITES_PER_JOB = 2
# Each jobset makes nEsConsumers (or nSitesPerJob) jobs in one generator cycle, and a task makes
# at most nJumboJobs jumbo jobs: bounded so that one task cannot ask for an unbounded batch.
MAX_ES_CONSUMERS = 100
MAX_SITES_PER_JOB = 20
MAX_JUMBO_JOBS = 10_000


@dataclass(frozen=True)
class EsMergeSpec:
    """The task's ``esmergeSpec``: transformation and parameter template of its ES merge jobs."""

    job_parameters: str
    trans_path: str | None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EsMergeSpec | None:
        """The ES merge spec of a task, None without one.

        Raises:
            InvalidInput: ``esmergeSpec`` is not an object with a non-empty string
                ``jobParameters`` and an optional string ``transPath``.
        """
        spec = params.get("esmergeSpec")
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise InvalidInput(f"task parameter 'esmergeSpec' must be an object, got {_show(spec)}")
        if not isinstance(spec.get("jobParameters"), str) or not spec["jobParameters"]:
            raise InvalidInput("task parameter 'esmergeSpec': 'jobParameters' must be a non-empty string")
        if len(spec["jobParameters"].encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES:
            raise InvalidInput(
                f"task parameter 'esmergeSpec': 'jobParameters' must be at most {MAX_TEMPLATE_BYTES} bytes"
            )
        if spec.get("transPath") is not None and not isinstance(spec["transPath"], str):
            raise InvalidInput("task parameter 'esmergeSpec': 'transPath' must be a string")
        return cls(job_parameters=spec["jobParameters"], trans_path=spec.get("transPath"))


@dataclass(frozen=True)
class EventServiceSpec:
    """The event-service and job-cloning keys of a task (domain.md §1.4, §7).

    ``task_event_service`` is the task's ``eventService`` column: 1 for an event-service task
    (``nEventsPerWorker`` set), 2 for job cloning (``useJobCloning`` set). ``n_events_per_worker``
    is the size of an event range (``ES``), ``n_consumers`` the consumer jobs of a jobset
    (``EC``), ``max_attempt_es`` the attempts of a range (``XA``), ``max_attempt_es_job`` those
    of a consumer (``XJ``), ``n_sites_per_job`` the clones of a cloned job (``NS``),
    ``clone_mode`` runonce or storeonce (``UC``), ``n_jumbo_jobs`` and ``max_jumbo_per_site``
    the jumbo jobs (``NJ``, ``MJ``), ``allow_partial`` lets a jobset merge without its hopeless
    ranges (``AP``). ``failed_only`` (``decAttOnFailedES``, ``XF``): only a range that failed loses
    an attempt when its consumer ends, one handed back unprocessed keeps its attempts.
    ``keep_done`` (``notDiscardEvents``, ``ND``): the done ranges of a jobset that fails (or whose
    merge job is killed or fails) stay ``done`` instead of ``discarded``, and the jobset that
    retries their file does not process them again. Both apply to event-service tasks only.
    """

    task_event_service: int
    n_events_per_worker: int | None = None
    n_consumers: int = DEFAULT_ES_CONSUMERS
    max_attempt_es: int = DEFAULT_MAX_ATTEMPT_ES
    max_attempt_es_job: int = DEFAULT_MAX_ATTEMPT_ES_JOB
    n_sites_per_job: int = DEFAULT_SITES_PER_JOB
    clone_mode: str | None = None
    n_jumbo_jobs: int | None = None
    max_jumbo_per_site: int | None = None
    allow_partial: bool = False
    failed_only: bool = False
    keep_done: bool = False
    merge: EsMergeSpec | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EventServiceSpec | None:
        """The spec of an event-service or job-cloning task, None for a normal one.

        The integer keys were checked by :func:`validate`.

        Raises:
            InvalidInput: ``eventService`` is not 0, 1 or 2; an event-service task without
                ``nEventsPerWorker`` or with ``mergeOutput``; a bad ``useJobCloning`` mode; a count
                above its bound; a bad ``esmergeSpec``.
        """
        kind = params.get("eventService")
        if kind is not None and (isinstance(kind, bool) or kind not in (0, 1, 2)):
            raise InvalidInput(
                "task parameter 'eventService' must be 0, 1 (event service) or 2 (job cloning), "
                f"got {_show(kind)}"
            )
        mode = params.get("useJobCloning")
        if mode is not None and mode not in CLONING_MODES:
            raise InvalidInput(
                f"task parameter 'useJobCloning' must be runonce or storeonce, got {_show(mode)}"
            )
        for key, bound in (
            ("nEsConsumers", MAX_ES_CONSUMERS),
            ("nSitesPerJob", MAX_SITES_PER_JOB),
            ("nJumboJobs", MAX_JUMBO_JOBS),
        ):
            if isinstance(params.get(key), int) and params[key] > bound:
                raise InvalidInput(f"task parameter {key!r} must be at most {bound}, got {params[key]}")
        merge = EsMergeSpec.from_params(params)
        if mode is not None or kind == TASK_JOB_CLONING:
            kind = TASK_JOB_CLONING
        elif kind == TASK_EVENT_SERVICE:
            if params.get("nEventsPerWorker") is None:
                raise InvalidInput("task parameter 'nEventsPerWorker' is required with eventService 1")
            if params.get("mergeOutput"):
                raise InvalidInput(
                    "task parameter 'mergeOutput' cannot be used with eventService 1: "
                    "event-service outputs are merged by the esmergeSpec jobs"
                )
        else:
            return None
        return cls(
            task_event_service=kind,
            n_events_per_worker=params.get("nEventsPerWorker") if kind == TASK_EVENT_SERVICE else None,
            n_consumers=params.get("nEsConsumers") or DEFAULT_ES_CONSUMERS,
            max_attempt_es=params.get("maxAttemptES") or DEFAULT_MAX_ATTEMPT_ES,
            max_attempt_es_job=params.get("maxAttemptEsJob") or DEFAULT_MAX_ATTEMPT_ES_JOB,
            n_sites_per_job=params.get("nSitesPerJob") or DEFAULT_SITES_PER_JOB,
            clone_mode=(mode or "runonce") if kind == TASK_JOB_CLONING else None,
            n_jumbo_jobs=params.get("nJumboJobs") if kind == TASK_EVENT_SERVICE else None,
            max_jumbo_per_site=params.get("maxJumboPerSite") if kind == TASK_EVENT_SERVICE else None,
            allow_partial=bool(params.get("allowPartialFinish")),
            failed_only=kind == TASK_EVENT_SERVICE and bool(params.get("decAttOnFailedES")),
            keep_done=kind == TASK_EVENT_SERVICE and bool(params.get("notDiscardEvents")),
            merge=merge,
        )

    @property
    def is_event_service(self) -> bool:
        return self.task_event_service == TASK_EVENT_SERVICE

    def split_tags(self) -> dict[str, str | None]:
        """The task's ``splitRule`` tags (domain.md §1.4); None where unset."""
        es = self.is_event_service
        cloning = not es
        tags: dict[str, int | None] = {
            "ES": self.n_events_per_worker if es else 1,
            "EC": self.n_consumers if es else None,
            "XA": self.max_attempt_es if es else None,
            "XJ": self.max_attempt_es_job if es else None,
            "UC": CLONING_MODES[self.clone_mode] if cloning and self.clone_mode else None,
            "NS": self.n_sites_per_job if cloning else None,
            "NJ": self.n_jumbo_jobs or None,
            "MJ": (self.max_jumbo_per_site or self.n_jumbo_jobs) if self.n_jumbo_jobs else None,
            "AP": 1 if self.allow_partial else None,
            "XF": 1 if self.failed_only else None,
            "ND": 1 if self.keep_done else None,
        }
        return {tag: None if value is None else str(value) for tag, value in tags.items()}


@dataclass(frozen=True)
class RefinedTask:
    """Everything job generation needs from a task's parameters.

    ``datasets`` holds the master input first, then the secondary inputs, the outputs, the
    logs and, when the template uses ``${RNDMSEED}``, the random-seed dataset. ``n_events`` is
    the total of a noInput task or a cap otherwise; ``n_events_per_file`` is the size of each
    input file (for noInput, of the pseudo file, which holds all ``n_events`` unless the task
    gave nEventsPerFile). ``n_files`` caps the master files used. ``first_event`` is the
    global number of the first event, ``random_seed_offset`` is added to each seed. ``build`` is
    the build spec when the task needs a build job; ``merge`` the merge spec when its outputs are
    written unmerged first and merged by merge jobs (every output and log dataset then has an
    unmerged twin among ``datasets``).
    """

    job_params_template: str
    datasets: tuple[DatasetPlan, ...]
    split: SplitRule
    no_input: bool
    n_events: int | None
    n_events_per_file: int | None
    n_files: int | None
    max_attempt: int
    max_failure: int | None
    first_event: int
    random_seed_offset: int
    source_url: str | None
    core_count: int
    ram_count: int
    ram_unit: str | None
    base_ram_count: int
    walltime: int
    build: BuildSpec | None = None
    merge: MergeSpec | None = None
    event_service: EventServiceSpec | None = None
    # useSecrets: the task's jobs carry the owner's secrets to the pilot (split rule ST=1).
    use_secrets: bool = False
    # Split-rule tags of the pilot flags the task set (PILOT_FLAG_TAGS, altStageOut's AT).
    pilot_tags: tuple[tuple[str, str], ...] = ()

    @property
    def master(self) -> DatasetPlan:
        """The dataset that drives job generation."""
        return self.datasets[0]


def validate(params: Mapping[str, Any]) -> None:
    """Check a submitted task-parameter dict.

    Args:
        params: the decoded ``taskParamMap``.

    Raises:
        InvalidInput: a required key is missing or a known key has the wrong type or value; the
            message names the key, and for ``jobParameters`` and ``log`` the item index.
    """
    if not isinstance(params, Mapping):
        raise InvalidInput(f"task parameters must be an object, got {type(params).__name__}")
    task_name = _required(params, "taskName")
    if not isinstance(task_name, str) or not task_name:
        raise InvalidInput(f"task parameter 'taskName' must be a non-empty string, got {_show(task_name)}")
    if len(task_name) > MAX_TASK_NAME_CHARS:
        raise InvalidInput(f"task parameter 'taskName' must be at most {MAX_TASK_NAME_CHARS} characters")
    for key in ("vo", "prodSourceLabel"):
        if not isinstance(_required(params, key), str):
            raise InvalidInput(f"task parameter {key!r} must be a string, got {_show(params[key])}")
    for key in _OPTIONAL_STR_KEYS:
        if params.get(key) is not None and not isinstance(params[key], str):
            raise InvalidInput(f"task parameter {key!r} must be a string or null, got {_show(params[key])}")
    for key in _BOOL_KEYS:
        if params.get(key) is not None and not isinstance(params[key], bool):
            raise InvalidInput(f"task parameter {key!r} must be a boolean, got {_show(params[key])}")
    for key, minimum in _INT_KEYS.items():
        _check_int(f"task parameter {key!r}", params.get(key), minimum)
    alt_stage_out = params.get("altStageOut")
    if alt_stage_out is not None and alt_stage_out not in ALT_STAGE_OUT_MODES:
        raise InvalidInput(
            f"task parameter 'altStageOut' must be one of {', '.join(ALT_STAGE_OUT_MODES)}, "
            f"got {_show(alt_stage_out)}"
        )
    _check_gb_per_job("nGBPerJob", params.get("nGBPerJob"))
    _check_gb_per_job("nGBPerMergeJob", params.get("nGBPerMergeJob"))
    BuildSpec.from_params(params)
    MergeSpec.from_params(params)
    EventServiceSpec.from_params(params)
    _check_columns(params)
    goal_per_mille(params)
    pfn_list = _check_pfn_list(params.get("pfnList"))

    items = _required(params, "jobParameters")
    if not isinstance(items, list):
        raise InvalidInput(f"task parameter 'jobParameters' must be a list, got {_show(items)}")
    for index, item in enumerate(items):
        _check_item(f"jobParameters[{index}]", item)
    for label, log in _log_items(params):
        _check_item(label, log, param_type="log")
    if params.get("log_merge") is not None:
        _check_item("log_merge", params["log_merge"], param_type="log")

    if params.get("noInput"):
        if params.get("nEvents") is None and pfn_list is None:
            raise InvalidInput("task parameter 'nEvents' is required with noInput")
        if params.get("nEvents") == 0:
            raise InvalidInput("task parameter 'nEvents' must be a positive integer with noInput, got 0")
    elif pfn_list is None and not any(
        item["type"] == "template" and item["param_type"] in _INPUT_TYPES for item in items
    ):
        raise InvalidInput(
            "task parameter 'jobParameters' needs an input item (param_type input) "
            "unless noInput or pfnList is set"
        )


def refine(params: Mapping[str, Any]) -> RefinedTask:
    """Validate a task-parameter dict and turn it into a :class:`RefinedTask`.

    The template is the items' values joined as domain.md §1.5 describes: each value followed
    by a space unless ``"padding": false``, ``hidden`` items adding datasets but no text. The
    filename template of an output or log item is its text after the last ``=`` (quotes
    removed), replaced in the template by ``${OUTPUT<n>}`` / ``${LOG<n>}``; for a hidden item
    it is the whole value. Items marked ``es_only`` add text only for an event-service task
    (``eventService`` 1), whose run jobs are all ES consumers; ES merge jobs render their own
    ``esmergeSpec`` template.

    Args:
        params: the decoded ``taskParamMap``.

    Returns:
        The refined task.

    Raises:
        InvalidInput: :func:`validate` fails, two datasets claim the same stream, an input item
            has no ``${STREAM}`` placeholder, or the template exceeds the render limit.
    """
    validate(params)
    merge = MergeSpec.from_params(params)
    event_service = EventServiceSpec.from_params(params)
    builder = _Builder(params, event_service=event_service is not None and event_service.is_event_service)
    for label, log in _log_items(params):
        builder.add_top_level_log(label, log)
    if merge is not None and params.get("log_merge") is not None:
        builder.add_merged_log(params["log_merge"])
    for index, item in enumerate(params["jobParameters"]):
        builder.add_item(index, item)
    template = "".join(builder.text).rstrip()
    if len(template.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES:
        raise InvalidInput(
            f"task parameter 'jobParameters' makes a template longer than {MAX_TEMPLATE_BYTES} bytes"
        )

    no_input = bool(params.get("noInput")) or builder.pfn_list is not None
    n_events = params.get("nEvents") or None
    n_events_per_file = _events_per_file(params)
    if n_events_per_file is None and no_input and builder.pfn_list is None:
        n_events_per_file = n_events
    max_attempt = 1 if params.get("disableAutoRetry") else params.get("maxAttempt") or DEFAULT_MAX_ATTEMPT
    core_count = params.get("coreCount")
    return RefinedTask(
        job_params_template=template,
        datasets=builder.datasets(unmerged_name_at_end=bool(params.get("umNameAtEnd")) if merge else None),
        split=SplitRule.from_params(params, n_events_per_file),
        no_input=no_input,
        n_events=n_events,
        n_events_per_file=n_events_per_file,
        n_files=params.get("nFiles") or None,
        max_attempt=max_attempt,
        max_failure=params.get("maxFailure"),
        first_event=1 + builder.first_event_offset,
        random_seed_offset=builder.random_seed_offset,
        source_url=params.get("sourceURL"),
        core_count=1 if core_count is None else core_count,
        ram_count=params.get("ramCount") or 0,
        ram_unit=params.get("ramUnit") or params.get("ramCountUnit"),
        base_ram_count=params.get("baseRamCount") or 0,
        walltime=params.get("walltime") or 0,
        build=BuildSpec.from_params(params),
        merge=merge,
        event_service=event_service,
        use_secrets=bool(params.get("useSecrets")),
        pilot_tags=_pilot_tags(params),
    )


def _pilot_tags(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    tags = [(tag, "1") for key, tag in PILOT_FLAG_TAGS.items() if params.get(key)]
    mode = params.get("altStageOut")
    if mode is not None:
        tags.append((ALT_STAGE_OUT_TAG, ALT_STAGE_OUT_MODES[mode]))
    return tuple(tags)


class _Builder:
    """Collects template text and datasets while walking the items in order."""

    def __init__(self, params: Mapping[str, Any], *, event_service: bool) -> None:
        self.event_service = event_service
        self.text: list[str] = []
        self.pfn_list: list[str] | None = params.get("pfnList")
        self.inputs: list[DatasetPlan] = []
        self.outputs: list[DatasetPlan] = []
        self.logs: list[DatasetPlan] = []
        self.streams: dict[str, str] = {}
        self.uses_random_seed = False
        self.first_event_offset = 0
        self.random_seed_offset = 0
        self.pseudo_master: DatasetPlan | None = None
        if params.get("noInput") or self.pfn_list is not None:
            self.pseudo_master = DatasetPlan(
                name=PSEUDO_DATASET,
                type="pseudo_input",
                stream=PSEUDO_STREAM,
                is_master=True,
                files=None if self.pfn_list is None else tuple(self.pfn_list),
            )
            self.streams[PSEUDO_STREAM] = "the pseudo input of noInput/pfnList"

    def add_top_level_log(self, label: str, log: Mapping[str, Any]) -> None:
        self._add_output(label, log, "log", self.logs, f"LOG{len(self.logs)}")

    def add_merged_log(self, log: Mapping[str, Any]) -> None:
        """The ``log_merge`` item: the merged log of the pre-merge jobs, which only merge jobs write."""
        plan, _ = _output_plan("log_merge", "log", log, LOG_MERGE_STREAM)
        self._claim(LOG_MERGE_STREAM, "log_merge")
        attributes = plan.attributes if "mo" in plan.attributes else (*plan.attributes, "mo")
        self.logs.append(replace(plan, attributes=attributes))

    def add_item(self, index: int, item: Mapping[str, Any]) -> None:
        label = f"jobParameters[{index}]"
        value: str = item["value"]
        param_type = item.get("param_type") if item["type"] == "template" else None
        if param_type in _INPUT_TYPES:
            self._add_input(label, item)
        elif param_type == "number":
            self._add_number(label, item)
        elif param_type == "output":
            value = self._add_output(label, item, "output", self.outputs, f"OUTPUT{len(self.outputs)}")
        elif param_type == "log":
            same = next((plan for plan in self.logs if plan.name == item["dataset"]), None)
            if same is None:
                value = self._add_output(label, item, "log", self.logs, f"LOG{len(self.logs)}")
            else:
                value = _output_plan(label, "log", item, same.stream)[1]
        if item.get("hidden") or (item.get("es_only") and not self.event_service):
            return
        self.text.append(value)
        if item.get("padding", True):
            self.text.append(" ")

    def datasets(self, *, unmerged_name_at_end: bool | None) -> tuple[DatasetPlan, ...]:
        """The plans in order; with ``unmerged_name_at_end`` set (merging tasks) each output and log
        that jobs write gets its unmerged twin, the file template prefixed (or, when true,
        suffixed) with ``panda.um``."""
        inputs = list(self.inputs)
        if self.pseudo_master is not None:
            inputs.insert(0, self.pseudo_master)
        else:
            # A real input drives the task rather than, say, a sequence-number pseudo input.
            master = next((plan for plan in inputs if plan.type == "input"), inputs[0])
            inputs.remove(master)
            inputs.insert(0, replace(master, is_master=True))
        tail: list[DatasetPlan] = []
        if unmerged_name_at_end is not None:
            tail.extend(
                _unmerged_twin(plan, unmerged_name_at_end)
                for plan in (*self.outputs, *self.logs)
                if "mo" not in plan.attributes
            )
        if self.uses_random_seed:
            tail.append(DatasetPlan(name=RANDOM_SEED_STREAM, type="random_seed", stream=RANDOM_SEED_STREAM))
        return (*inputs, *self.outputs, *self.logs, *tail)

    def _add_input(self, label: str, item: Mapping[str, Any]) -> None:
        match = _STREAM_NAME.search(item["value"])
        if match is None:
            raise InvalidInput(f"{label}: an input item needs a ${{STREAM}} placeholder in 'value'")
        stream = match.group(1)
        self._claim(stream, label)
        files = item.get("files")
        self.inputs.append(
            DatasetPlan(
                name=item.get("dataset") or PSEUDO_DATASET,
                type=item["param_type"],
                stream=stream,
                container=item.get("container"),
                offset=item.get("offset") or 0,
                include=item.get("include"),
                exclude=item.get("exclude"),
                files=None if files is None else tuple(files),
                nfiles_per_job=item.get("nFilesPerJob"),
                ratio=None if item.get("ratio") is None else float(item["ratio"]),
                attributes=_attributes(item),
            )
        )

    def _add_number(self, label: str, item: Mapping[str, Any]) -> None:
        value: str = item["value"]
        offset = item.get("offset") or 0
        if _RANDOM_SEED.search(value):
            if not self.uses_random_seed:
                self._claim(RANDOM_SEED_STREAM, label)
            self.uses_random_seed = True
            self.random_seed_offset = offset
        if _FIRST_EVENT.search(value):
            self.first_event_offset = offset

    def _add_output(
        self, label: str, item: Mapping[str, Any], kind: str, plans: list[DatasetPlan], stream: str
    ) -> str:
        plan, text = _output_plan(label, kind, item, stream)
        self._claim(stream, label)
        plans.append(plan)
        return text

    def _claim(self, stream: str, owner: str) -> None:
        if stream in self.streams:
            raise InvalidInput(f"{owner}: stream {stream!r} is already used by {self.streams[stream]}")
        self.streams[stream] = owner


def _output_plan(label: str, kind: str, item: Mapping[str, Any], stream: str) -> tuple[DatasetPlan, str]:
    """The dataset of an output or log item and the item's text with the file name replaced."""
    value: str = item["value"]
    if item.get("hidden"):
        filename, text = _strip_quotes(value), value
    else:
        head, sep, name = value.rpartition("=")
        filename = _strip_quotes(name)
        # Keep the quotes around the file name in the command line.
        quoted = name.replace(filename, f"${{{stream}}}", 1) if filename else name
        text = head + sep + quoted
    if not filename:
        raise InvalidInput(f"{label}: 'value' of a {kind} item needs a file name")
    plan = DatasetPlan(
        name=item["dataset"],
        type=kind,
        stream=stream,
        container=item.get("container"),
        offset=item.get("offset") or 0,
        filename_template=filename,
        token=item.get("token"),
        destination=item.get("destination"),
        attributes=_attributes(item),
    )
    return plan, text


def _unmerged_twin(plan: DatasetPlan, name_at_end: bool) -> DatasetPlan:
    template = plan.filename_template or ""
    name = UNMERGED_PREFIX + plan.name
    if len(name) > MAX_DATASET_NAME_CHARS:
        raise InvalidInput(
            f"dataset {plan.name!r} is too long for its unmerged twin {name!r} "
            f"(at most {MAX_DATASET_NAME_CHARS} characters)"
        )
    return DatasetPlan(
        name=name,
        type=TRANSIENT_TYPES[plan.type],
        stream=TRANSIENT_PREFIX + plan.stream,
        offset=plan.offset,
        filename_template=f"{template}.{UNMERGED_PREFIX[:-1]}" if name_at_end else UNMERGED_PREFIX + template,
        token=plan.token,
        destination=plan.destination,
    )


def _strip_quotes(text: str) -> str:
    return text.strip().strip("\"'")


def _attributes(item: Mapping[str, Any]) -> tuple[str, ...]:
    tokens = [token for flag, token in _ATTRIBUTE_FLAGS.items() if item.get(flag) is True]
    extra = item.get("attributes")
    if isinstance(extra, str):
        extra = extra.split(",")
    for token in extra or ():
        if token and token not in tokens:
            tokens.append(token)
    return tuple(tokens)


def _events_per_file(params: Mapping[str, Any]) -> int | None:
    per_file = params.get("nEventsPerFile")
    per_input_file = params.get("nEventsPerInputFile")
    return per_file if per_file is not None else per_input_file


def _log_items(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The top-level ``log`` items with the label used in messages."""
    log = params.get("log")
    if log is None:
        return []
    if isinstance(log, list):
        return [(f"log[{index}]", item) for index, item in enumerate(log)]
    if isinstance(log, Mapping):
        return [("log", log)]
    raise InvalidInput(f"task parameter 'log' must be an object or a list of objects, got {_show(log)}")


def _check_item(label: str, item: Any, *, param_type: str | None = None) -> None:
    """Check one ``jobParameters`` item, or a top-level log item when ``param_type`` is given."""
    if not isinstance(item, Mapping):
        raise InvalidInput(f"{label} must be an object, got {_show(item)}")
    if param_type is None:
        item_type = _required_in(label, item, "type")
        if not isinstance(item_type, str) or item_type not in _ITEM_TYPES:
            raise InvalidInput(f"{label}: 'type' must be constant or template, got {_show(item_type)}")
        if item_type == "template":
            param_type = _required_in(label, item, "param_type")
            if not isinstance(param_type, str) or param_type not in _PARAM_TYPES:
                raise InvalidInput(
                    f"{label}: 'param_type' must be one of {', '.join(sorted(_PARAM_TYPES))}, "
                    f"got {_show(param_type)}"
                )
    elif item.get("param_type", param_type) != param_type:
        raise InvalidInput(f"{label}: 'param_type' must be {param_type}, got {_show(item['param_type'])}")
    if not isinstance(_required_in(label, item, "value"), str):
        raise InvalidInput(f"{label}: 'value' must be a string, got {_show(item['value'])}")
    for key in ("hidden", "padding", "es_only"):
        if item.get(key) is not None and not isinstance(item[key], bool):
            raise InvalidInput(f"{label}: {key!r} must be a boolean, got {_show(item[key])}")
    if param_type is None:
        return
    dataset = item.get("dataset")
    if param_type in _NEEDS_DATASET and dataset is None:
        raise InvalidInput(f"{label}: 'dataset' is required for param_type {param_type}")
    if dataset is not None and (not isinstance(dataset, str) or not dataset):
        raise InvalidInput(f"{label}: 'dataset' must be a non-empty string, got {_show(dataset)}")
    for key in ("container", "token", "destination", "include", "exclude"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise InvalidInput(f"{label}: {key!r} must be a string or null, got {_show(item[key])}")
    _check_int(f"{label}: 'offset'", item.get("offset"), 0)
    _check_int(f"{label}: 'nFilesPerJob'", item.get("nFilesPerJob"), 1)
    ratio = item.get("ratio")
    if ratio is not None and not _is_positive_number(ratio):
        raise InvalidInput(f"{label}: 'ratio' must be a positive number, got {_show(ratio)}")
    files = item.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) and f for f in files)):
        raise InvalidInput(f"{label}: 'files' must be a list of file names")
    attributes = item.get("attributes")
    if attributes is not None and not (
        isinstance(attributes, str)
        or (isinstance(attributes, list) and all(isinstance(a, str) for a in attributes))
    ):
        raise InvalidInput(f"{label}: 'attributes' must be a string or a list of strings")


def _check_int(label: str, value: Any, minimum: int | None) -> None:
    """Check an optional integer; ``label`` names it in the message (null means absent)."""
    if value is None:
        return
    # bool is an int subclass, but true is not a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{label} must be an integer, got {_show(value)}")
    if minimum == 1 and value < 1:
        raise InvalidInput(f"{label} must be a positive integer, got {value}")
    if minimum == 0 and value < 0:
        raise InvalidInput(f"{label} must be a non-negative integer, got {value}")


def column_problem(column: sa.Column[Any], value: Any) -> str | None:
    """Why ``value`` cannot be stored in ``column`` (too long, out of range), or None if it can.

    Both backends then behave alike: PostgreSQL would refuse such a value with a database error,
    SQLite would store it.
    """
    if isinstance(value, str) and isinstance(column.type, sa.String) and column.type.length is not None:
        if len(value) > column.type.length:
            return f"must be at most {column.type.length} characters"
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(column.type, sa.Integer):
        low, high = _INT64 if isinstance(column.type, sa.BigInteger) else _INT32
        if not low <= value <= high:
            return f"must be between {low} and {high}"
    return None


def _check_columns(params: Mapping[str, Any]) -> None:
    """Refuse strings and integers that do not fit the task column a parameter of that name fills.

    Only values of the column's kind are checked; a wrong type is the other checks' business. Other
    integer keys end up in 64-bit job and dataset columns.
    """
    for key, value in params.items():
        column = tasks_table.c.get(_COLUMN_ALIASES.get(key, key))
        problem = None if column is None else column_problem(column, value)
        if problem:
            raise InvalidInput(f"task parameter {key!r} {problem}")
    for key in _INT_KEYS:
        value = params.get(key)
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise InvalidInput(f"task parameter {key!r} must be between {_INT64[0]} and {_INT64[1]}")


def _check_gb_per_job(key: str, value: Any) -> None:
    # prun sends "MAX" for "no limit".
    if value is None or value == "MAX" or _is_positive_number(value):
        return
    raise InvalidInput(f'task parameter {key!r} must be a positive number or "MAX", got {_show(value)}')


def _check_pfn_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(pfn, str) and pfn for pfn in value):
        raise InvalidInput("task parameter 'pfnList' must be a non-empty list of file names")
    return value


def _is_positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _required(params: Mapping[str, Any], key: str) -> Any:
    if key not in params or params[key] is None:
        raise InvalidInput(f"task parameter {key!r} is required")
    return params[key]


def _required_in(label: str, item: Mapping[str, Any], key: str) -> Any:
    if key not in item or item[key] is None:
        raise InvalidInput(f"{label}: {key!r} is required")
    return item[key]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def goal_per_mille(params: Mapping[str, Any]) -> int | None:
    """The task's ``goal`` (a percentage of its input) in per mille, as the task row stores it.

    Raises:
        InvalidInput: the goal is not a number in (0, 100].
    """
    goal = params.get("goal")
    if goal is None:
        return None
    if not _is_positive_number(goal) or goal > 100:
        raise InvalidInput(f"task parameter 'goal' must be a percentage in (0, 100], got {goal!r}")
    return round(goal * 10)
