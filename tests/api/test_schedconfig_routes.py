"""/cache/schedconfig/<queue>.all.json and /cache/schedconfig/ddmendpoints.json, as the pilot
fetches them: plain GETs without credentials."""

from __future__ import annotations

from bamboo.logic import queues
from bamboo.logic.schedconfig import LOCAL_STORAGE_ENDPOINT
from tests.api.conftest import ApiServer


async def test_a_queue_is_served_as_the_pilot_reads_it(api: ApiServer) -> None:
    async with api.state.db.transaction() as conn:
        await queues.put(
            conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "maxrss": 2000, "catchall": "x"}
        )
    async with api.client(https=False) as client:
        response = await client.get("/cache/schedconfig/TEST_PQ.all.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["nickname"] == "TEST_PQ" and document["state"] == "ACTIVE"
    assert document["status"] == "online" and document["maxrss"] == 2000
    assert document["catchall"] == "x,mv_final_destination"
    assert document["astorages"]["pw"] == [LOCAL_STORAGE_ENDPOINT]


async def test_an_updated_queue_is_served_with_its_new_status(api: ApiServer) -> None:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ"})
        await queues.update(conn, api.state.clock, "TEST_PQ", {"status": "offline"})
    async with api.client(https=False) as client:
        document = (await client.get("/cache/schedconfig/TEST_PQ.all.json")).json()
    assert document["status"] == "offline"


async def test_unknown_or_malformed_queue_names_are_404(api: ApiServer) -> None:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ"})
    async with api.client(https=False) as client:
        for path in (
            "/cache/schedconfig/NOPE.all.json",
            "/cache/schedconfig/TEST_PQ.json",
            "/cache/schedconfig/TEST_PQ",
            "/cache/schedconfig/.all.json",
            "/cache/schedconfig/%2E%2E.all.json",
            "/cache/schedconfig/TEST_PQ.all.json/x",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.text.startswith("ERROR : "), path


async def test_the_storages_document_names_the_local_storage(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        response = await client.get("/cache/schedconfig/ddmendpoints.json")
    assert response.status_code == 200
    endpoint = response.json()[LOCAL_STORAGE_ENDPOINT]
    protocol = endpoint["arprotocols"]["write_wan"][0]
    assert protocol["endpoint"] == "file://localhost"
    assert protocol["path"] == str((api.state.settings.home / "storage").resolve())
