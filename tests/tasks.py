"""Task parameters shared by the API and end-to-end tests (the shapes clients.md §7 uses).

They carry ``skipScout`` so that tests about other things see every job at once; scouting has
tests of its own (tests/api/test_scouting.py) with the shapes as clients send them.
"""

from __future__ import annotations

from typing import Any

QUEUE = "TEST_PQ"

NO_INPUT_TASK: dict[str, Any] = {
    "taskName": "user.testuser.e2e.0001/",
    "vo": "bamboo",
    "prodSourceLabel": "user",
    "site": QUEUE,
    "architecture": "",
    "transUses": "",
    "transHome": None,
    "transPath": "runGen-00-00-02",
    "processingType": "panda-client-2.2.0-jedi-run",
    "noInput": True,
    "skipScout": True,
    "nEvents": 4,
    "nEventsPerJob": 2,
    "jobParameters": [
        {"type": "constant", "value": '-p "echo hello"'},
        {"type": "template", "param_type": "number", "value": "--maxEvents=${MAXEVENTS}"},
        {"type": "template", "param_type": "number", "value": "--skipEvents=${SKIPEVENTS}"},
    ],
    "log": {
        "type": "template",
        "param_type": "log",
        "dataset": "user.testuser.e2e.0001.log/",
        "container": "user.testuser.e2e.0001.log/",
        "value": "user.testuser.e2e.0001.log.$JEDITASKID.${SN}.log.tgz",
    },
}


def input_task(dataset: str, name: str, n_files_per_job: int = 3) -> dict[str, Any]:
    """An analysis task over ``dataset`` writing ``<name>_out/`` and ``<name>.log/``."""
    return {
        "taskName": name,
        "vo": "bamboo",
        "prodSourceLabel": "user",
        "site": QUEUE,
        "architecture": "",
        "transUses": "",
        "transPath": "runAna",
        "processingType": "panda-client-2.2.0-jedi-run",
        "nFilesPerJob": n_files_per_job,
        "skipScout": True,
        "jobParameters": [
            {"type": "template", "param_type": "input", "value": '-i "${IN/T}"', "dataset": dataset},
            {
                "type": "template",
                "param_type": "output",
                "dataset": f"{name}_out/",
                "value": f"--outputFile={name}.$JEDITASKID._${{SN/P}}.out.root",
            },
        ],
        "log": {
            "type": "template",
            "param_type": "log",
            "dataset": f"{name}.log/",
            "value": f"{name}.log.$JEDITASKID.${{SN}}.log.tgz",
        },
    }
