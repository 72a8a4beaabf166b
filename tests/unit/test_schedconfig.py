"""The queue and storage documents the real pilot reads, and the storage layout they point to."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import pytest

from bamboo.logic.schedconfig import LOCAL_STORAGE_ENDPOINT, pilot_queuedata, storage_endpoints
from bamboo.storage import UnsafeName
from bamboo.storage.layout import deterministic_path


def test_a_plain_queue_stages_with_mv_to_the_local_storage() -> None:
    document = pilot_queuedata({"name": "TEST_PQ", "status": "online", "type": "unified", "corecount": 1})
    assert document["nickname"] == document["panda_resource"] == document["atlas_site"] == "TEST_PQ"
    assert document["state"] == "ACTIVE" and document["status"] == "online"
    assert document["copytools"] == {"mv": {"setup": ""}}
    assert document["acopytools"] == {"pr": ["mv"], "pw": ["mv"], "pl": ["mv"]}
    assert document["astorages"] == {activity: [LOCAL_STORAGE_ENDPOINT] for activity in ("pr", "pw", "pl")}
    assert document["catchall"] == "mv_final_destination"
    assert document["corecount"] == 1 and document["is_cvmfs"] is False


def test_the_spec_keeps_its_catchall_switches_and_its_site() -> None:
    document = pilot_queuedata(
        {"name": "Q", "status": "offline", "site": "SITE_A", "catchall": "allow_no_pilot,disableReassign"}
    )
    assert document["catchall"] == "allow_no_pilot,disableReassign,mv_final_destination"
    assert document["atlas_site"] == "SITE_A" and document["status"] == "offline"
    again = pilot_queuedata({"name": "Q", "catchall": "mv_final_destination"})
    assert again["catchall"] == "mv_final_destination"


def test_a_spec_with_its_own_copy_tools_is_passed_on_unchanged() -> None:
    spec = {
        "name": "Q",
        "state": "INACTIVE",
        "copytools": {"rucio": {"setup": ""}},
        "acopytools": {"pr": ["rucio"]},
        "astorages": {"pw": ["SOME_DATADISK"]},
        "maxwdir": 20000,
    }
    document = pilot_queuedata(spec)
    assert {key: document[key] for key in spec} == spec
    assert document["catchall"] == ""


def test_the_storage_names_the_directory_for_every_transfer_activity(tmp_path: Path) -> None:
    endpoint = storage_endpoints(tmp_path)[LOCAL_STORAGE_ENDPOINT]
    protocol = {"endpoint": "file://localhost", "path": str(tmp_path), "flavour": "POSIX", "id": 1}
    assert endpoint["is_deterministic"] is True and endpoint["state"] == "ACTIVE"
    assert set(endpoint["arprotocols"]) == {"read_lan", "read_wan", "write_lan", "write_wan"}
    assert all(protocols == [protocol] for protocols in endpoint["arprotocols"].values())


def test_the_layout_is_rucios_deterministic_path() -> None:
    digest = hashlib.md5(b"user.jdoe:data.txt").hexdigest()
    assert deterministic_path("user.jdoe", "data.txt") == PurePosixPath(
        "user", "jdoe", digest[0:2], digest[2:4], "data.txt"
    )
    assert deterministic_path("mc23", "EVNT.1._000001.pool.root").parts[0] == "mc23"


@pytest.mark.parametrize(
    ("scope", "lfn"),
    [("user..jdoe", "f"), ("user.jdoe", "../f"), ("..", "f"), ("user", ".hidden"), ("", "f")],
)
def test_the_layout_refuses_names_that_would_leave_the_storage(scope: str, lfn: str) -> None:
    with pytest.raises(UnsafeName):
        deterministic_path(scope, lfn)
