"""Validating and refining task parameters (domain.md §1, clients.md §7)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bamboo.logic.errors import InvalidInput
from bamboo.logic.jobparams import JobContext, output_file_name, render
from bamboo.logic.splitting import SplitRule
from bamboo.logic.taskparams import (
    DEFAULT_BUILD_LABEL,
    MAX_TASK_PARAMS_BYTES,
    BuildSpec,
    DatasetPlan,
    refine,
    validate,
)

# clients.md §7, S1
E2E_TASK: dict[str, Any] = {
    "taskName": "user.testuser.e2e.0001/",
    "vo": "testvo",
    "prodSourceLabel": "user",
    "site": "TEST_PQ",
    "architecture": "",
    "transUses": "",
    "transHome": None,
    "transPath": "runGen-00-00-02",
    "processingType": "panda-client-2.0.2-jedi-run",
    "noInput": True,
    "nEvents": 2,
    "nEventsPerJob": 1,
    "jobParameters": [{"type": "constant", "value": '-p "echo hello"'}],
    "log": {
        "type": "template",
        "param_type": "log",
        "dataset": "user.testuser.e2e.0001.log/",
        "container": "user.testuser.e2e.0001.log/",
        "value": "user.testuser.e2e.0001.log.$JEDITASKID.${SN}.log.tgz",
    },
}

# domain.md §1.6
ANALYSIS_TASK: dict[str, Any] = {
    "taskName": "user.jdoe.ana.v1/",
    "uniqueTaskName": True,
    "vo": "atlas",
    "userName": "jdoe",
    "prodSourceLabel": "user",
    "taskType": "anal",
    "taskPriority": 1000,
    "architecture": "x86_64-el9-gcc13-opt",
    "transUses": "",
    "transHome": None,
    "processingType": "panda-client-1.6.0-jedi-run",
    "site": None,
    "excludedSite": [],
    "includedSite": None,
    "nFilesPerJob": 2,
    "nMaxFilesPerJob": 200,
    "respectSplitRule": True,
    "maxAttempt": 5,
    "sourceURL": "https://pandaserver.example.org:25443",
    "log": {
        "type": "template",
        "param_type": "log",
        "dataset": "user.jdoe.ana.v1.log/",
        "container": "user.jdoe.ana.v1.log/",
        "value": "user.jdoe.ana.v1.log.$JEDITASKID.${SN}.log.tgz",
    },
    "jobParameters": [
        {"type": "constant", "value": '-j "" --sourceURL ${SURL}'},
        {"type": "constant", "value": "-r ."},
        {"type": "constant", "value": "__delimiter__", "hidden": True},
        {"type": "constant", "value": "-a sources.1234abcd.tar.gz"},
        {
            "type": "template",
            "param_type": "output",
            "hidden": True,
            "dataset": "user.jdoe.ana.v1_out.root/",
            "container": "user.jdoe.ana.v1_out.root/",
            "value": "user.jdoe.$JEDITASKID._${SN/P}.out.root",
        },
        {"type": "constant", "value": "-o \"{'out.root': 'user.jdoe.$JEDITASKID._${SN/P}.out.root'}\""},
        {
            "type": "template",
            "param_type": "input",
            "value": '-i "${IN/T}"',
            "dataset": "data24_13p6TeV:data24_13p6TeV.periodA.DAOD_PHYS.p6000",
            "expand": True,
            "exclude": "\\.log\\.tgz(\\.\\d+)*$",
        },
        {"type": "constant", "value": '-p "', "padding": False},
        {"type": "constant", "value": "python%20ana.py"},
        {"type": "constant", "value": '"'},
    ],
    "dsForIN": "data24_13p6TeV:data24_13p6TeV.periodA.DAOD_PHYS.p6000",
}

# domain.md §1.7
GENERATION_TASK: dict[str, Any] = {
    "taskName": "mc.gen.example.v1",
    "vo": "wlcg",
    "userName": "produser",
    "prodSourceLabel": "managed",
    "taskType": "prod",
    "taskPriority": 500,
    "architecture": "x86_64-el9",
    "transUses": "Gen-1.0",
    "transHome": "GenHome-1.0.0",
    "transPath": "generate.sh",
    "processingType": "evgen",
    "workingGroup": "GEN",
    "cloud": "EU",
    "coreCount": 1,
    "ramCount": 2000,
    "ramUnit": "MBPerCore",
    "noInput": True,
    "nEvents": 10000,
    "nEventsPerJob": 1000,
    "maxAttempt": 3,
    "log": {
        "type": "template",
        "param_type": "log",
        "dataset": "mc.gen.example.v1.log",
        "token": "local",
        "destination": "local",
        "value": "mc.gen.example.v1.log._${SN}.log.tgz",
    },
    "jobParameters": [
        {"type": "constant", "value": "--beamEnergy=6800"},
        {"type": "template", "param_type": "number", "value": "--maxEvents=${MAXEVENTS}"},
        {"type": "template", "param_type": "number", "value": "--firstEvent=${FIRSTEVENT}"},
        {"type": "template", "param_type": "number", "value": "--randomSeed=${RNDMSEED}", "offset": 1000},
        {
            "type": "template",
            "param_type": "output",
            "dataset": "mc.gen.example.v1.EVNT",
            "token": "local",
            "destination": "local",
            "value": "--outputFile=mc.gen.example.v1.EVNT._${SN}.root",
        },
    ],
}


def with_changes(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    params = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            params.pop(key, None)
        else:
            params[key] = value
    return params


def input_task(*items: dict[str, Any], **changes: Any) -> dict[str, Any]:
    params = {"taskName": "t", "vo": "vo", "prodSourceLabel": "user", "jobParameters": list(items)}
    return with_changes(params, **changes)


IN_ITEM = {"type": "template", "param_type": "input", "value": "-i ${IN/L}", "dataset": "scope:ds1"}


# --- the reference tasks --------------------------------------------------------------------


def test_e2e_task() -> None:
    task = refine(E2E_TASK)
    assert task.job_params_template == '-p "echo hello"'
    assert task.datasets == (
        DatasetPlan(name="pseudo_dataset", type="pseudo_input", stream="IN", is_master=True),
        DatasetPlan(
            name="user.testuser.e2e.0001.log/",
            type="log",
            stream="LOG0",
            container="user.testuser.e2e.0001.log/",
            filename_template="user.testuser.e2e.0001.log.$JEDITASKID.${SN}.log.tgz",
        ),
    )
    assert task.split == SplitRule(n_events_per_job=1)
    assert task.no_input is True
    assert task.n_events == 2
    assert task.n_events_per_file == 2
    assert task.master.stream == "IN"
    assert (task.max_attempt, task.max_failure, task.core_count, task.first_event) == (3, None, 1, 1)
    log_name = output_file_name(task.datasets[1].filename_template or "", 1, task_id=10000001)
    assert log_name == "user.testuser.e2e.0001.log.10000001.000001.log.tgz"


def test_analysis_task() -> None:
    task = refine(ANALYSIS_TASK)
    assert task.job_params_template == (
        '-j "" --sourceURL ${SURL} -r . -a sources.1234abcd.tar.gz '
        "-o \"{'out.root': 'user.jdoe.$JEDITASKID._${SN/P}.out.root'}\" "
        '-i "${IN/T}" -p "python%20ana.py "'
    )
    master, output, log = task.datasets
    assert master == DatasetPlan(
        name="data24_13p6TeV:data24_13p6TeV.periodA.DAOD_PHYS.p6000",
        type="input",
        stream="IN",
        is_master=True,
        exclude="\\.log\\.tgz(\\.\\d+)*$",
    )
    assert output == DatasetPlan(
        name="user.jdoe.ana.v1_out.root/",
        type="output",
        stream="OUTPUT0",
        container="user.jdoe.ana.v1_out.root/",
        filename_template="user.jdoe.$JEDITASKID._${SN/P}.out.root",
    )
    assert (log.type, log.stream, log.filename_template) == (
        "log",
        "LOG0",
        "user.jdoe.ana.v1.log.$JEDITASKID.${SN}.log.tgz",
    )
    assert task.split == SplitRule(n_files_per_job=2, n_max_files_per_job=200)
    assert task.no_input is False
    assert task.n_events is None
    assert task.max_attempt == 5
    assert task.source_url == "https://pandaserver.example.org:25443"


def test_analysis_task_renders() -> None:
    task = refine(ANALYSIS_TASK)
    job = JobContext(
        streams={
            "IN": ["DAOD.01.root", "DAOD.02.root"],
            "OUTPUT0": [output_file_name(task.datasets[1].filename_template or "", 7, task_id=10000001)],
        },
        task_id=10000001,
        serial=7,
        source_url=task.source_url,
    )
    assert render(task.job_params_template, job) == (
        '-j "" --sourceURL https://pandaserver.example.org:25443 -r . -a sources.1234abcd.tar.gz '
        "-o \"{'out.root': 'user.jdoe.10000001._000007.out.root'}\" "
        "-i \"['DAOD.01.root', 'DAOD.02.root']\" -p \"python%20ana.py \""
    )


def test_generation_task() -> None:
    task = refine(GENERATION_TASK)
    assert task.job_params_template == (
        "--beamEnergy=6800 --maxEvents=${MAXEVENTS} --firstEvent=${FIRSTEVENT} "
        "--randomSeed=${RNDMSEED} --outputFile=${OUTPUT0}"
    )
    assert [(d.name, d.type, d.stream, d.is_master) for d in task.datasets] == [
        ("pseudo_dataset", "pseudo_input", "IN", True),
        ("mc.gen.example.v1.EVNT", "output", "OUTPUT0", False),
        ("mc.gen.example.v1.log", "log", "LOG0", False),
        ("RNDMSEED", "random_seed", "RNDMSEED", False),
    ]
    output, log = task.datasets[1], task.datasets[2]
    assert output.filename_template == "mc.gen.example.v1.EVNT._${SN}.root"
    assert (output.token, output.destination) == ("local", "local")
    assert log.filename_template == "mc.gen.example.v1.log._${SN}.log.tgz"
    assert task.split == SplitRule(n_events_per_job=1000)
    assert (task.n_events, task.n_events_per_file) == (10000, 10000)
    assert task.random_seed_offset == 1000
    assert task.first_event == 1
    assert (task.core_count, task.ram_count, task.ram_unit) == (1, 2000, "MBPerCore")
    assert task.max_attempt == 3


def test_reference_tasks_validate() -> None:
    for params in (E2E_TASK, ANALYSIS_TASK, GENERATION_TASK):
        validate(params)


def test_max_task_params_bytes() -> None:
    assert MAX_TASK_PARAMS_BYTES == 1024 * 1024


# --- template construction ------------------------------------------------------------------


def test_padding_hidden_and_trailing_space() -> None:
    task = refine(
        input_task(
            {"type": "constant", "value": "a", "padding": False},
            {"type": "constant", "value": "b"},
            {"type": "constant", "value": "secret", "hidden": True},
            IN_ITEM,
            {"type": "constant", "value": "c  "},
        )
    )
    assert task.job_params_template == "ab -i ${IN/L} c"


def test_output_file_name_after_the_last_equals_sign() -> None:
    task = refine(
        input_task(
            IN_ITEM,
            {
                "type": "template",
                "param_type": "output",
                "dataset": "d.AOD",
                "value": "--opt=x --out='a=b.${SN}.root'",
            },
            {
                "type": "template",
                "param_type": "output",
                "dataset": "d.HIST",
                "value": '--hist="h.${SN}.root"',
            },
            {"type": "template", "param_type": "output", "dataset": "d.TXT", "value": "t.${SN}.txt"},
        )
    )
    assert (
        task.job_params_template == "-i ${IN/L} --opt=x --out='a=${OUTPUT0}' --hist=\"${OUTPUT1}\" ${OUTPUT2}"
    )
    assert [d.filename_template for d in task.datasets[1:4]] == [
        "b.${SN}.root",
        "h.${SN}.root",
        "t.${SN}.txt",
    ]
    assert [d.stream for d in task.datasets[1:4]] == ["OUTPUT0", "OUTPUT1", "OUTPUT2"]


def test_hidden_output_keeps_the_whole_value() -> None:
    task = refine(
        input_task(
            IN_ITEM,
            {
                "type": "template",
                "param_type": "output",
                "dataset": "d",
                "value": '"x=y.${SN}"',
                "hidden": True,
            },
        )
    )
    assert task.job_params_template == "-i ${IN/L}"
    assert task.datasets[1].filename_template == "x=y.${SN}"


def test_output_offset_token_destination_and_attributes() -> None:
    task = refine(
        input_task(
            IN_ITEM,
            {
                "type": "template",
                "param_type": "output",
                "dataset": "d",
                "container": "c/",
                "value": "--o=x.${SN}",
                "offset": 1000,
                "token": "ATLASDATADISK",
                "destination": "SITE_A",
                "allowNoOutput": True,
            },
        )
    )
    output = task.datasets[1]
    assert (output.offset, output.token, output.destination, output.container) == (
        1000,
        "ATLASDATADISK",
        "SITE_A",
        "c/",
    )
    assert output.attributes == ("an",)


def test_output_item_without_file_name() -> None:
    params = input_task(
        IN_ITEM, {"type": "template", "param_type": "output", "dataset": "d", "value": "--out="}
    )
    with pytest.raises(InvalidInput, match=r"jobParameters\[1\]: 'value' of a output item needs a file name"):
        refine(params)


def test_secondary_inputs() -> None:
    task = refine(
        input_task(
            {
                "type": "template",
                "param_type": "input",
                "value": "--db=${DBR}",
                "dataset": "ddo.db",
                "ratio": 0.5,
            },
            {
                "type": "template",
                "param_type": "input",
                "value": '-i "${IN/T}"',
                "dataset": "mc:evnt",
                "offset": 3,
                "files": ["f1", "f2"],
                "include": "f.*",
                "reusable": True,
            },
            {
                "type": "template",
                "param_type": "input",
                "value": "--minbias=${MB[0:2]}",
                "dataset": "mc:minbias",
                "nFilesPerJob": 2,
                "attributes": "repeat,nosplit",
            },
        )
    )
    master, dbr, minbias = task.datasets
    # the first input item is the master even when it comes later in the list
    assert (master.name, master.stream, master.is_master, master.offset) == ("ddo.db", "DBR", True, 0)
    assert (dbr.name, dbr.stream, dbr.is_master, dbr.offset) == ("mc:evnt", "IN", False, 3)
    assert dbr.files == ("f1", "f2") and dbr.include == "f.*" and dbr.attributes == ("ru",)
    assert master.ratio == 0.5
    assert (minbias.stream, minbias.nfiles_per_job, minbias.attributes) == ("MB", 2, ("repeat", "nosplit"))
    assert task.job_params_template == '--db=${DBR} -i "${IN/T}" --minbias=${MB[0:2]}'


def test_real_input_is_master_over_sequence_numbers() -> None:
    task = refine(
        input_task(
            {
                "type": "template",
                "param_type": "pseudo_input",
                "value": "--seq=${SEQNUMBER}",
                "dataset": "seq_number",
                "offset": 10,
                "hidden": True,
            },
            IN_ITEM,
        )
    )
    assert [(d.name, d.type, d.stream, d.is_master) for d in task.datasets] == [
        ("scope:ds1", "input", "IN", True),
        ("seq_number", "pseudo_input", "SEQNUMBER", False),
    ]
    assert task.datasets[1].offset == 10


def test_only_pseudo_input() -> None:
    task = refine(
        input_task(
            {
                "type": "template",
                "param_type": "pseudo_input",
                "value": "${SEQNUMBER}",
                "dataset": "seq_number",
            }
        )
    )
    assert task.master.name == "seq_number" and task.master.is_master


def test_pfn_list() -> None:
    task = refine(
        input_task(
            {"type": "constant", "value": "-i ${IN/T}"}, pfnList=["root://a/f1", "root://a/f2"], noInput=True
        )
    )
    assert task.master == DatasetPlan(
        name="pseudo_dataset",
        type="pseudo_input",
        stream="IN",
        is_master=True,
        files=("root://a/f1", "root://a/f2"),
    )
    assert task.no_input is True
    assert task.n_events is None and task.n_events_per_file is None


def test_log_list_and_log_in_job_parameters() -> None:
    logs = [
        {"type": "template", "param_type": "log", "dataset": "l1", "value": "l1.${SN}.tgz"},
        {"type": "template", "param_type": "log", "dataset": "l2", "value": "l2.${SN}.tgz"},
    ]
    task = refine(
        input_task(
            IN_ITEM,
            {"type": "template", "param_type": "log", "dataset": "l2", "value": "--log=l2.${SN}.tgz"},
            {"type": "template", "param_type": "log", "dataset": "l3", "value": "--log3=l3.${SN}.tgz"},
            log=logs,
        )
    )
    assert [(d.name, d.stream) for d in task.datasets[1:]] == [("l1", "LOG0"), ("l2", "LOG1"), ("l3", "LOG2")]
    assert task.job_params_template == "-i ${IN/L} --log=${LOG1} --log3=${LOG2}"


def test_number_items() -> None:
    task = refine(
        input_task(
            IN_ITEM,
            {"type": "template", "param_type": "number", "value": "--first=${FIRSTEVENT}", "offset": 500},
            {"type": "template", "param_type": "number", "value": "--seed=${RNDMSEED/M[#*2]}", "offset": 7},
        )
    )
    assert task.first_event == 501
    assert task.random_seed_offset == 7
    assert task.datasets[-1] == DatasetPlan(name="RNDMSEED", type="random_seed", stream="RNDMSEED")


def test_es_only_items_add_no_text() -> None:
    task = refine(input_task(IN_ITEM, {"type": "constant", "value": "--es", "es_only": True}))
    assert task.job_params_template == "-i ${IN/L}"


def test_duplicate_streams() -> None:
    second = {"type": "template", "param_type": "input", "value": "${IN}", "dataset": "scope:ds2"}
    with pytest.raises(
        InvalidInput, match=r"jobParameters\[1\]: stream 'IN' is already used by jobParameters\[0\]"
    ):
        refine(input_task(IN_ITEM, second))
    with pytest.raises(
        InvalidInput, match=r"jobParameters\[0\]: stream 'IN' is already used by the pseudo input"
    ):
        refine(input_task(IN_ITEM, noInput=True, nEvents=10))
    seed_input = {"type": "template", "param_type": "input", "value": "${RNDMSEED}", "dataset": "x"}
    number = {"type": "template", "param_type": "number", "value": "${RNDMSEED}"}
    with pytest.raises(InvalidInput, match=r"jobParameters\[2\]: stream 'RNDMSEED' is already used"):
        refine(input_task(IN_ITEM, seed_input, number))


def test_input_item_needs_a_placeholder() -> None:
    item = {"type": "template", "param_type": "input", "value": "-i files", "dataset": "d"}
    with pytest.raises(
        InvalidInput, match=r"jobParameters\[0\]: an input item needs a \$\{STREAM\} placeholder"
    ):
        refine(input_task(item))


def test_template_size_limit() -> None:
    big = {"type": "constant", "value": "x" * 70000}
    with pytest.raises(InvalidInput, match="'jobParameters' makes a template longer than 65536 bytes"):
        refine(input_task(IN_ITEM, big))


# --- numbers and defaults -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 3),
        ({"maxAttempt": 7}, 7),
        ({"maxAttempt": 7, "disableAutoRetry": True}, 1),
        ({"disableAutoRetry": False}, 3),
        ({"maxAttempt": None}, 3),
    ],
)
def test_max_attempt(changes: dict[str, Any], expected: int) -> None:
    assert refine(input_task(IN_ITEM, **changes)).max_attempt == expected


def test_defaults() -> None:
    task = refine(input_task(IN_ITEM))
    assert (task.core_count, task.ram_count, task.base_ram_count, task.walltime) == (1, 0, 0, 0)
    assert (task.ram_unit, task.source_url, task.max_failure, task.n_files) == (None, None, None, None)
    assert task.split == SplitRule()
    assert (task.first_event, task.random_seed_offset) == (1, 0)


def test_resource_numbers() -> None:
    task = refine(
        input_task(
            IN_ITEM,
            coreCount=0,
            ramCount=1500,
            ramCountUnit="MBPerCoreFixed",
            baseRamCount=300,
            walltime=-1,
            maxFailure=2,
            nFiles=10,
            nEvents=5000,
        )
    )
    assert (task.core_count, task.ram_count, task.ram_unit, task.base_ram_count) == (
        0,
        1500,
        "MBPerCoreFixed",
        300,
    )
    assert (task.walltime, task.max_failure, task.n_files, task.n_events) == (-1, 2, 10, 5000)


def test_zero_caps_mean_no_cap() -> None:
    task = refine(input_task(IN_ITEM, nFiles=0, nEvents=0))
    assert (task.n_files, task.n_events) == (None, None)


@pytest.mark.parametrize(
    ("changes", "split", "per_file"),
    [
        ({"nEventsPerJob": 500, "nEventsPerFile": 1000}, SplitRule(n_events_per_job=500), 1000),
        ({"nEventsPerJob": 3000, "nEventsPerFile": 1000}, SplitRule(n_files_per_job=3), 1000),
        ({"nEventsPerJob": 3000, "nEventsPerInputFile": 1000}, SplitRule(n_files_per_job=3), 1000),
        ({"nEventsPerJob": 3000}, SplitRule(n_events_per_job=3000), None),
        ({"nGBPerJob": "MAX", "nMaxFilesPerJob": 20}, SplitRule(n_max_files_per_job=20), None),
        ({"nGBPerJob": 10}, SplitRule(n_gb_per_job=10.0), None),
    ],
)
def test_split_rules(changes: dict[str, Any], split: SplitRule, per_file: int | None) -> None:
    task = refine(input_task(IN_ITEM, **changes))
    assert task.split == split
    assert task.n_events_per_file == per_file


def test_no_input_larger_job_than_task() -> None:
    # the pseudo file holds all events, so the job takes it whole
    task = refine(with_changes(E2E_TASK, nEventsPerJob=5))
    assert task.split == SplitRule(n_files_per_job=2)


# --- validation errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"taskName": ...}, "task parameter 'taskName' is required"),
        ({"taskName": None}, "task parameter 'taskName' is required"),
        ({"taskName": ""}, "task parameter 'taskName' must be a non-empty string, got ''"),
        ({"taskName": 5}, "task parameter 'taskName' must be a non-empty string, got 5"),
        ({"taskName": "x" * 257}, "task parameter 'taskName' must be at most 256 characters"),
        ({"vo": ...}, "task parameter 'vo' is required"),
        ({"vo": 1}, "task parameter 'vo' must be a string, got 1"),
        ({"prodSourceLabel": ...}, "task parameter 'prodSourceLabel' is required"),
        ({"jobParameters": ...}, "task parameter 'jobParameters' is required"),
        ({"jobParameters": "x"}, "task parameter 'jobParameters' must be a list, got 'x'"),
        ({"nEventsPerJob": -3}, "task parameter 'nEventsPerJob' must be a positive integer, got -3"),
        ({"nEventsPerJob": 0}, "task parameter 'nEventsPerJob' must be a positive integer, got 0"),
        ({"nEventsPerJob": True}, "task parameter 'nEventsPerJob' must be an integer, got True"),
        ({"nEventsPerJob": 2.0}, "task parameter 'nEventsPerJob' must be an integer, got 2.0"),
        ({"nEventsPerJob": "10"}, "task parameter 'nEventsPerJob' must be an integer, got '10'"),
        ({"nFilesPerJob": 0}, "task parameter 'nFilesPerJob' must be a positive integer, got 0"),
        ({"nMaxFilesPerJob": 0}, "task parameter 'nMaxFilesPerJob' must be a positive integer, got 0"),
        ({"maxAttempt": 0}, "task parameter 'maxAttempt' must be a positive integer, got 0"),
        ({"coreCount": -1}, "task parameter 'coreCount' must be a non-negative integer, got -1"),
        ({"nFiles": -1}, "task parameter 'nFiles' must be a non-negative integer, got -1"),
        ({"ramCount": False}, "task parameter 'ramCount' must be an integer, got False"),
        ({"nEventsPerFile": 0}, "task parameter 'nEventsPerFile' must be a positive integer, got 0"),
        ({"nEventsPerInputFile": 0}, "task parameter 'nEventsPerInputFile' must be a positive integer"),
        ({"maxFailure": 0}, "task parameter 'maxFailure' must be a positive integer"),
        ({"parent_tid": 0}, "task parameter 'parent_tid' must be a positive integer"),
        ({"taskPriority": "high"}, "task parameter 'taskPriority' must be an integer, got 'high'"),
        ({"walltime": 1.5}, "task parameter 'walltime' must be an integer"),
        ({"baseRamCount": -2}, "task parameter 'baseRamCount' must be a non-negative integer"),
        ({"nGBPerJob": 0}, "task parameter 'nGBPerJob' must be a positive number or \"MAX\", got 0"),
        ({"nGBPerJob": "10"}, "task parameter 'nGBPerJob' must be a positive number or \"MAX\", got '10'"),
        ({"nGBPerJob": True}, "'nGBPerJob' must be a positive number"),
        ({"nGBPerJob": float("nan")}, "'nGBPerJob' must be a positive number"),
        ({"noInput": "yes"}, "task parameter 'noInput' must be a boolean, got 'yes'"),
        ({"disableAutoRetry": 1}, "task parameter 'disableAutoRetry' must be a boolean, got 1"),
        ({"site": 3}, "task parameter 'site' must be a string or null, got 3"),
        ({"cloud": ["EU"]}, "task parameter 'cloud' must be a string or null, got ['EU']"),
        ({"sourceURL": 1}, "task parameter 'sourceURL' must be a string or null"),
        ({"pfnList": []}, "task parameter 'pfnList' must be a non-empty list of file names"),
        ({"pfnList": ["a", 3]}, "task parameter 'pfnList' must be a non-empty list of file names"),
        ({"log": "x"}, "task parameter 'log' must be an object or a list of objects, got 'x'"),
        ({"log": ["x"]}, "log[0] must be an object, got 'x'"),
        ({"log": {"value": "l.${SN}"}}, "log: 'dataset' is required for param_type log"),
        ({"log": {"dataset": "l"}}, "log: 'value' is required"),
        ({"log": {"dataset": "l", "value": "x", "param_type": "output"}}, "log: 'param_type' must be log"),
        (
            {"log": [{"dataset": "l", "value": "x"}, {"dataset": 3, "value": "x"}]},
            "log[1]: 'dataset' must be",
        ),
    ],
)
def test_validate_task_keys(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        validate(input_task(IN_ITEM, **changes))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("x", r"jobParameters\[1\] must be an object, got 'x'"),
        ({"value": "x"}, r"jobParameters\[1\]: 'type' is required"),
        (
            {"type": "text", "value": "x"},
            r"jobParameters\[1\]: 'type' must be constant or template, got 'text'",
        ),
        ({"type": "constant"}, r"jobParameters\[1\]: 'value' is required"),
        ({"type": "constant", "value": 3}, r"jobParameters\[1\]: 'value' must be a string, got 3"),
        (
            {"type": "constant", "value": "x", "hidden": "yes"},
            r"jobParameters\[1\]: 'hidden' must be a boolean",
        ),
        (
            {"type": "constant", "value": "x", "padding": 0},
            r"jobParameters\[1\]: 'padding' must be a boolean",
        ),
        ({"type": "template", "value": "x"}, r"jobParameters\[1\]: 'param_type' is required"),
        (
            {"type": "template", "param_type": "weird", "value": "x"},
            r"jobParameters\[1\]: 'param_type' must be one of input, log, number, output, pseudo_input",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}"},
            r"jobParameters\[1\]: 'dataset' is required for param_type input",
        ),
        (
            {"type": "template", "param_type": "output", "value": "x"},
            r"jobParameters\[1\]: 'dataset' is required for param_type output",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}", "dataset": ""},
            r"jobParameters\[1\]: 'dataset' must be a non-empty string, got ''",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}", "dataset": "d", "offset": -1},
            r"jobParameters\[1\]: 'offset' must be a non-negative integer, got -1",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}", "dataset": "d", "nFilesPerJob": 0},
            r"jobParameters\[1\]: 'nFilesPerJob' must be a positive integer, got 0",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}", "dataset": "d", "ratio": -1},
            r"jobParameters\[1\]: 'ratio' must be a positive number, got -1",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}", "dataset": "d", "files": "f"},
            r"jobParameters\[1\]: 'files' must be a list of file names",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}", "dataset": "d", "exclude": 5},
            r"jobParameters\[1\]: 'exclude' must be a string or null, got 5",
        ),
        (
            {"type": "template", "param_type": "output", "value": "x", "dataset": "d", "token": 1},
            r"jobParameters\[1\]: 'token' must be a string or null",
        ),
        (
            {"type": "template", "param_type": "input", "value": "${IN2}", "dataset": "d", "attributes": [1]},
            r"jobParameters\[1\]: 'attributes' must be a string or a list of strings",
        ),
        (
            {"type": "template", "param_type": "number", "value": "${RNDMSEED}", "offset": "1"},
            r"jobParameters\[1\]: 'offset' must be an integer, got '1'",
        ),
    ],
)
def test_validate_items(item: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate(input_task(IN_ITEM, item))


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidInput, match="task parameters must be an object, got list"):
        validate([])  # type: ignore[arg-type]


def test_no_input_needs_events() -> None:
    with pytest.raises(InvalidInput, match="task parameter 'nEvents' is required with noInput"):
        validate(with_changes(E2E_TASK, nEvents=...))
    with pytest.raises(InvalidInput, match="'nEvents' must be a positive integer with noInput, got 0"):
        validate(with_changes(E2E_TASK, nEvents=0))
    # a PFN list gives the pseudo input its files, so no event count is needed
    validate(with_changes(E2E_TASK, nEvents=..., pfnList=["root://x/y"]))


def test_input_item_required_without_no_input() -> None:
    with pytest.raises(InvalidInput, match="'jobParameters' needs an input item"):
        validate(with_changes(E2E_TASK, noInput=...))
    with pytest.raises(InvalidInput, match="'jobParameters' needs an input item"):
        validate(input_task({"type": "constant", "value": "x", "param_type": "input"}))
    validate(input_task(pfnList=["root://x/y"]))


def test_unknown_keys_and_empty_job_parameters_are_fine() -> None:
    validate(with_changes(E2E_TASK, jobParameters=[], somethingNew={"a": [1, 2]}, transHome=None))
    assert refine(with_changes(E2E_TASK, jobParameters=[])).job_params_template == ""


def test_nulls_mean_absent() -> None:
    task = refine(input_task(IN_ITEM, nEventsPerJob=None, coreCount=None, site=None, cloud=None, log=None))
    assert task.split == SplitRule() and task.core_count == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values most of the time, so that some examples get past validation."""
    return st.integers(0, 9).flatmap(lambda n: json_values if n == 9 else valid)


item_values = st.fixed_dictionaries(
    {
        "type": mostly(st.sampled_from(["template", "constant"])),
        "value": mostly(st.sampled_from(["${IN}", "--o=x.${SN}", "${RNDMSEED}", "x", "", "=", "${OUTPUT0}"])),
    },
    optional={
        "param_type": mostly(st.sampled_from(["input", "output", "log", "number", "pseudo_input"])),
        "dataset": mostly(st.sampled_from(["d1", "d2", "d1", ""])),
        "hidden": mostly(st.booleans()),
        "padding": st.booleans(),
        "offset": mostly(st.integers(0, 5)),
        "ratio": mostly(st.floats(0.1, 3)),
        "files": mostly(st.lists(st.text(min_size=1, max_size=3), max_size=2)),
    },
)
task_values = st.fixed_dictionaries(
    {
        "taskName": mostly(st.just("t")),
        "vo": st.just("vo"),
        "prodSourceLabel": st.just("user"),
        "jobParameters": mostly(st.lists(item_values, max_size=5)),
    },
    optional={
        "log": mostly(item_values | st.lists(item_values, max_size=2)),
        "noInput": mostly(st.booleans()),
        "nEvents": mostly(st.integers(0, 100)),
        "nEventsPerJob": mostly(st.integers(0, 100)),
        "nFilesPerJob": mostly(st.integers(0, 10)),
        "nGBPerJob": mostly(st.sampled_from(["MAX", 1, 2.5])),
        "nEventsPerFile": mostly(st.integers(0, 100)),
        "pfnList": mostly(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3)),
        "maxAttempt": mostly(st.integers(0, 5)),
        "disableAutoRetry": mostly(st.booleans()),
    },
)


@settings(max_examples=300, deadline=None)
@given(params=task_values)
def test_refine_only_raises_invalid_input(params: dict[str, Any]) -> None:
    try:
        task = refine(params)
    except InvalidInput:
        return
    assert task.datasets[0].is_master
    assert sum(d.is_master for d in task.datasets) == 1
    streams = [d.stream for d in task.datasets]
    assert len(streams) == len(set(streams))
    assert task.max_attempt >= 1


constant_items = st.fixed_dictionaries(
    {"type": st.just("constant"), "value": st.sampled_from(["-r .", "--x=1", '-p "', "a b", ""])},
    optional={"padding": st.booleans(), "hidden": st.booleans()},
)
input_items = st.fixed_dictionaries(
    {
        "type": st.just("template"),
        "param_type": st.just("input"),
        "value": st.sampled_from(["-i ${IN}", "${IN/T}", "--db=${DBR}", "--mb=${MB[0:1]}", '-j "${IN2/L}"']),
        "dataset": st.sampled_from(["scope:a", "scope:b/"]),
    },
    optional={"offset": st.integers(0, 3), "nFilesPerJob": st.integers(1, 3), "hidden": st.booleans()},
)
output_items = st.fixed_dictionaries(
    {
        "type": st.just("template"),
        "param_type": st.sampled_from(["output", "log"]),
        "value": st.sampled_from(["--o=x.${SN}.root", "y._${SN/P}", "--z='q.$JEDITASKID.${SN}'"]),
        "dataset": st.sampled_from(["out.a", "out.b", "log.a"]),
    },
    optional={"hidden": st.booleans(), "offset": st.integers(0, 1000)},
)
number_items = st.fixed_dictionaries(
    {
        "type": st.just("template"),
        "param_type": st.just("number"),
        "value": st.sampled_from(["--seed=${RNDMSEED}", "--first=${FIRSTEVENT}", "--max=${MAXEVENTS}"]),
    },
    optional={"offset": st.integers(0, 1000)},
)
valid_tasks = st.fixed_dictionaries(
    {
        "taskName": st.just("t"),
        "vo": st.just("vo"),
        "prodSourceLabel": st.sampled_from(["user", "managed"]),
        "jobParameters": st.lists(
            st.one_of(constant_items, input_items, output_items, number_items), min_size=1, max_size=7
        ),
    },
    optional={
        "log": st.fixed_dictionaries(
            {"dataset": st.just("log.top"), "value": st.just("log.top.${SN}.tgz")},
            optional={"param_type": st.just("log")},
        ),
        "nEventsPerJob": st.integers(1, 50),
        "nFilesPerJob": st.integers(1, 5),
        "nGBPerJob": st.sampled_from(["MAX", 2, 0.5]),
        "nEventsPerFile": st.integers(1, 50),
        "maxAttempt": st.integers(1, 9),
    },
).flatmap(
    lambda params: st.sampled_from(
        [params, {**params, "noInput": True, "nEvents": 100}, {**params, "pfnList": ["root://h/f1"]}]
    )
)


@settings(max_examples=200, deadline=None)
@given(params=valid_tasks)
def test_refined_templates_render(params: dict[str, Any]) -> None:
    try:
        task = refine(params)
    except InvalidInput as exc:
        # the only way these tasks go wrong
        assert "is already used by" in exc.message or "needs an input item" in exc.message
        return
    assert task.master is task.datasets[0] and task.master.is_master
    assert sum(d.is_master for d in task.datasets) == 1
    kinds = [d.type for d in task.datasets]
    order = {"input": 0, "pseudo_input": 0, "output": 1, "log": 2, "random_seed": 3}
    assert [order[kind] for kind in kinds] == sorted(order[kind] for kind in kinds)
    streams = [d.stream for d in task.datasets]
    assert len(streams) == len(set(streams))
    assert all(d.filename_template for d in task.datasets if d.type in ("output", "log"))
    job = JobContext(
        streams={stream: [f"{stream.lower()}.1.root"] for stream in streams},
        task_id=10000001,
        serial=1,
        random_seed=1 + task.random_seed_offset,
        max_events=10,
        skip_events=0,
        first_event=task.first_event,
        source_url="https://x",
    )
    text = render(task.job_params_template, job)
    assert "${" not in text and "$JEDITASKID" not in text


# --- buildSpec --------------------------------------------------------------------------------

BUILD_SPEC = {
    "prodSourceLabel": "panda",
    "archiveName": "sources.0a1b.tar.gz",
    "jobParameters": "-i ${IN} -o ${OUT} --sourceURL ${SURL} -r .",
    "transPath": "buildGen",
}


def test_build_spec_parsed() -> None:
    assert BuildSpec.from_params({"buildSpec": BUILD_SPEC}) == BuildSpec(
        archive_name="sources.0a1b.tar.gz",
        job_parameters="-i ${IN} -o ${OUT} --sourceURL ${SURL} -r .",
        trans_path="buildGen",
        prod_source_label="panda",
    )
    label_less = {key: value for key, value in BUILD_SPEC.items() if key != "prodSourceLabel"}
    assert (
        BuildSpec.from_params({"buildSpec": label_less}).prod_source_label == DEFAULT_BUILD_LABEL == "panda"
    )
    assert BuildSpec.from_params({}) is None
    assert refine({**E2E_TASK, "buildSpec": BUILD_SPEC}).build == BuildSpec.from_params(
        {"buildSpec": BUILD_SPEC}
    )
    assert refine(E2E_TASK).build is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("-i ${IN}", "'buildSpec' must be an object"),
        ({**BUILD_SPEC, "archiveName": ""}, "'archiveName' must be a non-empty string"),
        ({"archiveName": "a.tar.gz"}, "'jobParameters' must be a non-empty string"),
        ({**BUILD_SPEC, "transPath": 3}, "'transPath' must be a string"),
    ],
)
def test_bad_build_spec_refused_at_submission(spec: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        validate({**E2E_TASK, "buildSpec": spec})


# --- merging tasks --------------------------------------------------------------------------


def _merging(**overrides: Any) -> dict[str, Any]:
    params = copy.deepcopy(ANALYSIS_TASK)
    params.update(mergeOutput=True, mergeSpec={"jobParameters": "${TRN_OUTPUT:OUTPUT}"}, **overrides)
    return params


def test_a_merging_task_gives_every_output_and_log_an_unmerged_twin() -> None:
    refined = refine(_merging())
    assert refined.merge is not None and refined.merge.job_parameters == "${TRN_OUTPUT:OUTPUT}"
    plain = {plan.stream: plan for plan in refine(ANALYSIS_TASK).datasets}
    twins = [plan for plan in refined.datasets if plan.type.startswith("trn_")]
    assert [(t.stream, t.type) for t in twins] == [
        (f"TRN_{stream}", f"trn_{plan.type}")
        for stream, plan in plain.items()
        if plan.type in ("output", "log")
    ]
    for twin in twins:
        merged = plain[twin.stream.removeprefix("TRN_")]
        assert twin.name == f"panda.um.{merged.name}"
        assert twin.filename_template == f"panda.um.{merged.filename_template}"
        assert twin.offset == merged.offset
    # The run jobs' command line is the same: their outputs are renamed, not the placeholders.
    assert refined.job_params_template == refine(ANALYSIS_TASK).job_params_template


def test_unmerged_names_at_the_end_and_the_merged_log_has_no_twin() -> None:
    merged_log = {**ANALYSIS_TASK["log"], "dataset": "user.jdoe.ana.v1.merge_log/", "value": "m.${SN}.tgz"}
    refined = refine(_merging(umNameAtEnd=True, log_merge=merged_log))
    by_stream = {plan.stream: plan for plan in refined.datasets}
    assert by_stream["LOG_MERGE"].attributes == ("mo",) and "TRN_LOG_MERGE" not in by_stream
    assert by_stream["TRN_LOG0"].filename_template == f"{by_stream['LOG0'].filename_template}.panda.um"


def test_without_merge_output_the_merge_spec_and_merged_log_are_ignored() -> None:
    params = _merging(log_merge={**ANALYSIS_TASK["log"], "dataset": "x.merge_log/", "value": "m.tgz"})
    params["mergeOutput"] = False
    refined = refine(params)
    assert refined.merge is None
    assert not [
        plan for plan in refined.datasets if plan.type.startswith("trn_") or plan.stream == "LOG_MERGE"
    ]


def test_a_twin_name_too_long_for_its_column_is_refused() -> None:
    params = _merging()
    output = next(item for item in params["jobParameters"] if item.get("param_type") == "output")
    output["dataset"] = "u." + "x" * 250
    with pytest.raises(InvalidInput, match="too long for its unmerged twin"):
        refine(params)


@pytest.mark.parametrize(
    ("changes", "tags"),
    [
        ({}, (None, None)),
        ({"decAttOnFailedES": True}, ("1", None)),
        ({"notDiscardEvents": True}, (None, "1")),
        ({"decAttOnFailedES": False, "notDiscardEvents": True}, (None, "1")),
    ],
)
def test_es_range_options_become_split_rule_tags(changes: dict[str, Any], tags: tuple) -> None:
    task = refine(input_task(IN_ITEM, eventService=1, nEventsPerWorker=5, **changes))
    assert task.event_service is not None
    split = task.event_service.split_tags()
    assert (split["XF"], split["ND"]) == tags
    assert (task.event_service.failed_only, task.event_service.keep_done) == (tags[0] == "1", tags[1] == "1")


def test_es_range_options_mean_nothing_without_the_event_service() -> None:
    # A job-cloning task has no ranges to decrement or keep: the options are not recorded.
    task = refine(input_task(IN_ITEM, useJobCloning="runonce", decAttOnFailedES=True, notDiscardEvents=True))
    assert task.event_service is not None
    assert (task.event_service.split_tags()["XF"], task.event_service.split_tags()["ND"]) == (None, None)
    assert refine(input_task(IN_ITEM, notDiscardEvents=True)).event_service is None


@pytest.mark.parametrize("key", ["decAttOnFailedES", "notDiscardEvents"])
@pytest.mark.parametrize("value", [1, "true", [True]])
def test_es_range_options_must_be_booleans(key: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=f"task parameter '{key}' must be a boolean"):
        validate(input_task(IN_ITEM, eventService=1, nEventsPerWorker=5, **{key: value}))


@pytest.mark.parametrize(
    ("changes", "tags"),
    [
        ({}, ()),
        ({"noLoopingCheck": True, "onSiteMerging": False}, (("LC", "1"),)),
        ({"hpoWorkflow": True, "altStageOut": "on"}, (("HO", "1"), ("AT", "1"))),
        ({"altStageOut": "off"}, (("AT", "2"),)),
    ],
)
def test_pilot_flag_tags(changes: dict[str, Any], tags: tuple[tuple[str, str], ...]) -> None:
    assert refine(input_task(IN_ITEM, **changes)).pilot_tags == tags


ALT_STAGE_OUT_REFUSED = "task parameter 'altStageOut' must be one of on, off, force"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"putLogToOS": "yes"}, "task parameter 'putLogToOS' must be a boolean, got 'yes'"),
        ({"altStageOut": "sometimes"}, f"{ALT_STAGE_OUT_REFUSED}, got 'sometimes'"),
        ({"altStageOut": 1}, f"{ALT_STAGE_OUT_REFUSED}, got 1"),
    ],
)
def test_pilot_flags_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        validate(input_task(IN_ITEM, **changes))
