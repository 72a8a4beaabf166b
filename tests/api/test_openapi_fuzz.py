"""Schemathesis over our OpenAPI document: no generated request may break the server.

Every operation gets schemathesis's coverage cases (boundaries, missing and wrongly typed
parameters) and Hypothesis fuzzing, valid and invalid data, sent through the real app to a real
database (SQLite and PostgreSQL), once without credentials and once with a production token. A case
fails on any HTTP 5xx, on a status or content type the document does not list, on a body that does
not match the documented schema, and on an answer that is neither a well-formed PanDA envelope nor
``ERROR : ...`` text. Generation is derandomized, so every run sends the same cases.

The document is built at import time, as the app builds the one it serves: schemathesis's
fixture-loaded schemas (``schemathesis.pytest.from_fixture``) set ``Node._nodeid``, which pytest 9.2
no longer has. ``test_fuzzed_document_is_the_served_one`` checks that the two are the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, HookContext
from schemathesis.core.transport import Response

from bamboo.api import v1
from bamboo.api.app import create_app
from bamboo.api.envelope import encode_json
from bamboo.api.openapi import openapi_document
from bamboo.api.state import build_state
from bamboo.config import Settings
from bamboo.db.engine import Database
from bamboo.db.schema import metadata
from bamboo.home import prepare_home
from bamboo.logic.clock import SystemClock
from tests.api.conftest import ApiServer
from tests.conftest import SEEDED_TABLES
from tests.tasks import NO_INPUT_TASK

# Fuzzing cases per operation, each database and identity; the coverage phase adds its own cases.
MAX_EXAMPLES = 10
ENVELOPE_KEYS = {"success", "message", "data"}
# Endpoints whose handler answers a bare JSON string instead of the envelope.
TEXT_ANSWERS = {endpoint.path for endpoint in v1.load() if endpoint.answers_text}
DOCUMENT = orjson.loads(encode_json(openapi_document(v1.load())))


@schemathesis.check
def well_formed_answer(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Our API answers a PanDA envelope (200, 503) or upstream's ``ERROR : <reason>`` plain text."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code in (200, 503):
        assert content_type == "application/json", content_type
        body = response.json()
        if isinstance(body, str) and response.status_code == 200:
            assert case.operation.path in TEXT_ANSWERS, body
            return None
        assert isinstance(body, dict) and set(body) == ENVELOPE_KEYS, body
        assert isinstance(body["success"], bool), body
        assert body["message"] is None or isinstance(body["message"], str), body
        if response.status_code == 503:
            assert body["success"] is False and "retry-after" in response.headers, body
    else:
        assert content_type.startswith("text/plain"), content_type
        assert response.text.startswith("ERROR : "), response.text
    return None


schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
    database="none",
)
schema.config.phases.update(phases=["coverage", "fuzzing"])
schema.config.checks.update(
    included_check_names=[
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "well_formed_answer",
    ]
)


# A task that exists, filled in by fuzz_api: random ids name no task, and the handlers would stop at
# "not found" before the interesting part.
KNOWN_TASK_IDS: list[int] = []
TASK_ID_NAMES = ("task_id", "jedi_task_id")


def _sometimes_a_known_task(params: Any) -> st.SearchStrategy[Any]:
    names = [name for name in TASK_ID_NAMES if isinstance(params, dict) and name in params]
    if not names or not KNOWN_TASK_IDS:
        return st.just(params)
    return st.sampled_from([params, {**params, **dict.fromkeys(names, KNOWN_TASK_IDS[-1])}])


@schema.hook
def flatmap_query(ctx: HookContext, query: Any) -> st.SearchStrategy[Any]:
    return _sometimes_a_known_task(query)


@schema.hook
def flatmap_body(ctx: HookContext, body: Any) -> st.SearchStrategy[Any]:
    return _sometimes_a_known_task(body)


@pytest.fixture(scope="module")
async def fuzz_api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiServer]:
    """One server per database for all operations: a fresh one per case would cost more than the case."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    db = Database(database_url)
    config = Settings(home=tmp / "home", trusted_proxies=["127.0.0.1"], ban_refresh_seconds=0)
    home = prepare_home(config)
    state = build_state(config, home, db, SystemClock())
    api = ApiServer(state=state, home=home, app=create_app(state), tmp=tmp)
    async with api.client(headers=api.token_headers("Fuzz Robot", role="production")) as client:
        submitted = (await client.post("/api/v1/task/submit", json={"task_parameters": NO_INPUT_TASK})).json()
    assert submitted["success"] is True, submitted
    KNOWN_TASK_IDS.append(submitted["data"])
    yield api
    KNOWN_TASK_IDS.clear()
    async with db.transaction() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name not in SEEDED_TABLES:
                await conn.execute(table.delete())
    await db.dispose()


@pytest.fixture
async def api_loop(fuzz_api: ApiServer) -> asyncio.AbstractEventLoop:
    """The event loop the app's database engine lives in (idle while a synchronous test runs)."""
    return asyncio.get_running_loop()


async def test_fuzzed_document_is_the_served_one(fuzz_api: ApiServer) -> None:
    async with fuzz_api.client() as client:
        served = await client.get("/openapi.json")
    assert served.json() == DOCUMENT


def _identity_headers(api: ApiServer, identity: str) -> dict[str, str]:
    return api.token_headers("Fuzz Robot", role="production") if identity == "production" else {}


async def _send(api: ApiServer, case: Case, headers: dict[str, str]) -> httpx.Response:
    kwargs: dict[str, Any] = case.as_transport_kwargs(base_url="https://testserver", headers=headers)
    # The kwargs are made for requests: httpx takes raw bytes as ``content`` and no cookies per request.
    if "data" in kwargs:
        kwargs["content"] = kwargs.pop("data")
    if kwargs.get("files"):
        # requests sends any part value as str(value); httpx takes only bytes, text or files.
        kwargs["files"] = [
            (name, (part[0], part[1] if isinstance(part[1], bytes | str) else str(part[1]), *part[2:]))
            for name, part in kwargs["files"]
        ]
    else:
        kwargs.pop("files", None)
    if kwargs.pop("cookies", None):
        raise AssertionError("the document declares no cookies")
    async with api.client() as client:
        request = client.build_request(**kwargs)
        # Multipart bodies (the upload endpoints) are streams; the checks read the request's bytes.
        await request.aread()
        return await client.send(request)


# Synchronous: schemathesis wraps the test in a synchronous Hypothesis test that pytest-asyncio cannot
# run on its loop, so each request runs on the database engine's loop, idle meanwhile, explicitly.
@schema.parametrize()
@pytest.mark.parametrize("identity", ["anonymous", "production"])
@settings(suppress_health_check=list(HealthCheck), deadline=None)
def test_generated_requests(
    case: Case, fuzz_api: ApiServer, api_loop: asyncio.AbstractEventLoop, identity: str
) -> None:
    headers = _identity_headers(fuzz_api, identity)
    response = api_loop.run_until_complete(_send(fuzz_api, case, headers))
    case.validate_response(response, headers=headers)
