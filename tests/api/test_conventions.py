"""The PanDA API v1 conventions (api-v1.md §1) through the real app and database."""

from __future__ import annotations

import gzip

import orjson
import pytest

from tests.api.conftest import ApiServer

JSON = {"Accept": "application/json", "Content-Type": "application/json"}


def envelope(response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["success", "message", "data"]
    return body


async def test_is_alive_over_plain_http(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        response = await client.get("/api/v1/system/is_alive")
    assert envelope(response) == {"success": True, "message": "", "data": None}


async def test_latest_is_an_alias_of_v1(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        response = await client.get("/api/latest/system/is_alive")
    assert envelope(response)["success"] is True


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/system/no_such_function", "ERROR : method no_such_function is forbidden"),
        ("/api/v1/nomodule/is_alive", "ERROR : method is_alive is forbidden"),
        ("/api/v2/system/is_alive", "ERROR : method is_alive is forbidden"),
        ("/api/v1/system/is_alive/", "ERROR : method  is forbidden"),
        ("/api/v1/system", "ERROR : method  is forbidden"),
        ("/api/v1/idds/decode_idds_enum", "ERROR : method decode_idds_enum is forbidden"),
    ],
)
async def test_unknown_routes_are_forbidden_in_plain_text(api: ApiServer, path: str, body: str) -> None:
    async with api.client(https=False) as client:
        response = await client.get(path, headers=api.token_headers())
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == body


async def test_secure_endpoint_without_identity(api: ApiServer) -> None:
    async with api.client() as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    assert envelope(response) == {
        "success": False,
        "message": "SSL secure connection is required",
        "data": None,
    }


async def test_token_is_not_an_identity_over_plain_http_by_default(api: ApiServer) -> None:
    async with api.client(https=False, headers=api.token_headers()) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    assert envelope(response)["message"] == "SSL secure connection is required"


async def test_token_over_plain_http_when_allowed(api_factory) -> None:
    api = api_factory(token_over_http=True)
    async with api.client(https=False, headers=api.token_headers()) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    assert envelope(response)["data"]["user_dn_raw"] == "Jane Doe/CN=nickname:janedoe"


async def test_token_identity_and_attributes(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers("jane doe")) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    data = envelope(response)["data"]
    assert data == {
        "user_dn_raw": "Jane Doe/CN=nickname:janedoe",
        # The compact user name, as upstream answers: the name tasks and secrets are owned by.
        "user_dn_clean": "Jane Doe",
        "fqans": [],
        "is_production_user": False,
        "production_working_groups": [],
        "primary_working_group": None,
    }


async def test_production_token_has_production_role(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    data = envelope(response)["data"]
    assert data["fqans"] == ["/bamboo/Role=production"]
    assert data["is_production_user"] is True


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (
            {"Authorization": "Bearer not.a.token", "Origin": "bamboo"},
            "ERROR : Token authentication failed. ",
        ),
        ({"Authorization": "Basic abc"}, "ERROR : Token authentication failed. "),
    ],
)
async def test_bad_token_is_403(api: ApiServer, headers: dict[str, str], reason: str) -> None:
    async with api.client(headers=headers) as client:
        response = await client.get("/api/v1/system/is_alive")
    assert response.status_code == 403
    assert response.text.startswith(reason)


async def test_token_without_origin_is_refused(api: ApiServer) -> None:
    headers = api.token_headers()
    del headers["Origin"]
    async with api.client(headers=headers) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    assert response.status_code == 403
    assert "Origin" in response.text
    assert headers["Authorization"].split()[1] not in response.text


async def test_certificate_from_trusted_proxy(api: ApiServer) -> None:
    headers = api.cert_headers("/DC=org/DC=example/OU=Users/CN=jdoe/CN=123456/CN=John Doe")
    async with api.client(headers=headers) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    data = envelope(response)["data"]
    assert data["user_dn_raw"] == "/DC=org/DC=example/OU=Users/CN=jdoe/CN=123456/CN=John Doe"
    assert data["user_dn_clean"] == "John Doe"
    assert data["is_production_user"] is False


async def test_proxy_with_voms_production_role(api: ApiServer) -> None:
    headers = api.cert_headers(
        "/DC=org/DC=example/CN=Prod Manager", proxy=True, fqans=["/bamboo/Role=production"]
    )
    async with api.client(headers=headers) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    data = envelope(response)["data"]
    assert data["fqans"] == ["/bamboo/Role=production"]
    assert data["is_production_user"] is True
    assert data["user_dn_clean"] == "Prod Manager"


async def test_limited_proxy_is_not_secure(api: ApiServer) -> None:
    headers = api.cert_headers("/DC=org/DC=example/CN=Limited Larry", proxy=True, limited=True)
    async with api.client(headers=headers) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    assert envelope(response)["message"] == "SSL secure connection is required"


async def test_forwarded_certificate_ignored_from_untrusted_address(api_factory) -> None:
    api = api_factory(trusted_proxies=[])
    headers = api.cert_headers("/DC=org/CN=Mallory")
    async with api.client(headers=headers) as client:
        response = await client.get("/api/v1/system/get_user_attributes")
    assert envelope(response)["message"] == "SSL secure connection is required"


async def test_forged_forwarded_certificate_is_403(api: ApiServer, api_factory, tmp_path) -> None:
    from bamboo.auth.local_ca import LocalCA, issue_user_credentials

    other_ca = LocalCA.load_or_create(tmp_path / "other")
    pem, _ = issue_user_credentials(other_ca, dn="/DC=org/CN=Eve", out_prefix=tmp_path / "eve")
    from urllib.parse import quote

    async with api.client(headers={api.state.settings.proxy_cert_header: quote(pem.read_text())}) as client:
        response = await client.get("/api/v1/system/is_alive")
    assert response.status_code == 403
    assert response.text.startswith("ERROR : Certificate authentication failed.")


async def test_no_banned_users(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.get("/api/v1/metaconfig/get_banned_users")
    assert envelope(response) == {"success": True, "message": "", "data": {}}


async def test_method_mismatch(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        response = await client.post("/api/v1/system/is_alive", json={})
    assert envelope(response) == {"success": False, "message": "expecting GET, received POST", "data": None}


async def test_secure_check_comes_before_method_check(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        response = await client.post("/api/v1/metaconfig/get_resource_types", json={})
    assert envelope(response)["message"] == "SSL secure connection is required"


async def test_unexpected_argument(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        response = await client.get("/api/v1/system/is_alive", params={"bogus": "1"})
    assert envelope(response)["message"] == "Argument error: got an unexpected keyword argument 'bogus'"


async def test_get_attributes_accepts_any_parameter_and_hides_credentials(api: ApiServer) -> None:
    headers = api.token_headers()
    async with api.client(headers=headers) as client:
        response = await client.get(
            "/api/v1/system/get_attributes", params=[("b", "2"), ("a", "1"), ("a", "3")]
        )
    body = envelope(response)
    assert body["data"]["parameters"] == {"a": "['1', '3']", "b": "2"}
    env = body["data"]["environment"]
    assert env["SSL_CLIENT_S_DN"] == "Jane Doe/CN=nickname:janedoe"
    assert "HTTP_AUTHORIZATION" not in env
    assert headers["Authorization"].split()[1] not in response.text
    assert body["message"].startswith("===== param =====\na = ['1', '3']\nb = 2\n====== env ======\n")


async def test_voms_attributes_of_a_token(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers(role="production")) as client:
        response = await client.get("/api/v1/system/get_voms_attributes")
    body = envelope(response)
    assert body["data"] == {"GRST_CRED_AUTH_TOKEN_0": "VOMS /bamboo/Role=production"}
    assert body["message"] == "GRST_CRED_AUTH_TOKEN_0 : VOMS /bamboo/Role=production"


async def test_get_site_specs_type_coercion_and_filter(api: ApiServer) -> None:
    from bamboo.logic import queues

    async with api.state.db.transaction() as conn:
        await queues.put(
            conn, api.state.clock, {"name": "Q_ANA", "type": "analysis", "ddm_input": "X", "maxrss": 2000}
        )
        await queues.put(conn, api.state.clock, {"name": "Q_PROD", "type": "production"})
    async with api.client(https=False) as client:
        default = envelope(await client.get("/api/v1/metaconfig/get_site_specs"))
        everything = envelope(await client.get("/api/v1/metaconfig/get_site_specs", params={"type": "all"}))
        wrong = envelope(await client.get("/api/v1/metaconfig/get_site_specs", params={"type": ["a", "b"]}))
    assert list(default["data"]) == ["Q_ANA"]
    assert "ddm_input" not in default["data"]["Q_ANA"]
    assert default["data"]["Q_ANA"]["maxrss"] == 2000
    assert sorted(everything["data"]) == ["Q_ANA", "Q_PROD"]
    assert wrong["message"] == "Type error: 'type' must be of type str, got list."


async def test_get_resource_types(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers()) as client:
        body = envelope(await client.get("/api/v1/metaconfig/get_resource_types"))
    assert [row["resource_name"] for row in body["data"]] == [
        "SCORE",
        "SCORE_HIMEM",
        "MCORE",
        "MCORE_HIMEM",
        "Undefined",
    ]
    assert body["data"][0] == {
        "resource_name": "SCORE",
        "mincore": 1,
        "maxcore": 1,
        "minrampercore": None,
        "maxrampercore": 2000,
    }


async def test_banned_user_gets_403_and_is_listed(api: ApiServer) -> None:
    from bamboo.logic import users

    async with api.state.db.transaction() as conn:
        await users.ban(conn, api.state.clock, "Jane Doe")
    async with api.client(headers=api.token_headers("jane doe")) as client:
        banned = await client.get("/api/v1/system/is_alive")
    async with api.client(headers=api.token_headers("Other User")) as client:
        listing = envelope(await client.get("/api/v1/metaconfig/get_banned_users"))
    assert banned.status_code == 403
    assert banned.text == "ERROR : Jane Doe is banned"
    assert listing["data"] == {"Jane Doe": False}


async def test_json_body_gzip_and_form(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        plain = await client.post("/api/v1/system/is_alive", content=b"{}", headers=JSON)
        zipped = await client.post(
            "/api/v1/system/is_alive",
            content=gzip.compress(b'{"x": 1}'),
            headers={**JSON, "Content-Encoding": "gzip"},
        )
        form = await client.post("/api/v1/system/is_alive", data={"y": "1"})
    assert envelope(plain)["message"] == "expecting GET, received POST"
    assert envelope(zipped)["message"] == "expecting GET, received POST"
    assert envelope(form)["message"] == "expecting GET, received POST"


async def test_post_argument_errors_after_method_check(api_factory) -> None:
    # get_attributes is GET-only; use a JSON POST to a secure GET endpoint with a token to reach the
    # method check, then the argument checks on GET.
    api = api_factory()
    async with api.client(headers=api.token_headers()) as client:
        response = await client.get("/api/v1/metaconfig/get_site_specs", params={"type": "all", "extra": "x"})
    assert envelope(response)["message"] == "Argument error: got an unexpected keyword argument 'extra'"


@pytest.mark.parametrize(
    ("body", "headers", "status", "text"),
    [
        (b"{not json", JSON, 400, "ERROR : received invalid JSON : "),
        (b"[1, 2]", JSON, 400, "ERROR : received invalid JSON : the body must be a JSON object"),
        (
            b"\x1f\x8bnot gzip",
            {**JSON, "Content-Encoding": "gzip"},
            400,
            "ERROR : received invalid JSON : bad gzip body",
        ),
    ],
)
async def test_unreadable_bodies(api: ApiServer, body: bytes, headers: dict, status: int, text: str) -> None:
    async with api.client(https=False) as client:
        response = await client.post("/api/v1/system/is_alive", content=body, headers=headers)
    assert response.status_code == status
    assert response.text.startswith(text)


async def test_body_size_limit_and_gzip_bomb(api_factory) -> None:
    api = api_factory(max_body_bytes=2048)
    big = orjson.dumps({"x": "a" * 4096})
    async with api.client(https=False) as client:
        too_big = await client.post("/api/v1/system/is_alive", content=big, headers=JSON)
        bomb = await client.post(
            "/api/v1/system/is_alive",
            content=gzip.compress(big),
            headers={**JSON, "Content-Encoding": "gzip"},
        )
    assert too_big.status_code == 413
    assert bomb.status_code == 413


async def test_openapi_is_deterministic_and_complete(api: ApiServer, api_factory) -> None:
    async with api.client(https=False) as client:
        first = await client.get("/openapi.json")
        docs = await client.get("/docs")
    second_app = api_factory()
    async with second_app.client(https=False) as client:
        second = await client.get("/openapi.json")
    assert first.content == second.content
    document = first.json()
    assert set(document["paths"]) >= {
        "/api/v1/system/is_alive",
        "/api/v1/system/get_attributes",
        "/api/v1/system/get_voms_attributes",
        "/api/v1/system/get_user_attributes",
        "/api/v1/metaconfig/get_banned_users",
        "/api/v1/metaconfig/get_site_specs",
        "/api/v1/metaconfig/get_resource_types",
    }
    site_specs = document["paths"]["/api/v1/metaconfig/get_site_specs"]["get"]
    assert site_specs["parameters"][0]["schema"] == {
        "type": "string",
        "default": "analysis",
        "description": site_specs["parameters"][0]["schema"]["description"],
    }
    assert site_specs["parameters"][0]["schema"]["description"]
    assert docs.status_code == 200 and "/api/v1/metaconfig/get_site_specs" in docs.text


async def test_auth_config_and_discovery_documents(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        config = (await client.get("/auth/bamboo_auth_config.json")).json()
        missing = await client.get("/auth/nope_auth_config.json")
        discovery = (await client.get("/.well-known/openid-configuration")).json()
        jwks = (await client.get("/.well-known/jwks.json")).json()
    assert config["client_id"] == "bamboo" and config["vo"] == "bamboo"
    assert config["oidc_config_url"].endswith("/.well-known/openid-configuration")
    assert missing.status_code == 404
    assert discovery["issuer"] == api.home.issuer.issuer_url
    assert jwks["keys"][0]["kid"] == api.home.issuer.kid


async def test_database_unavailable_is_503_with_retry_after(api_factory, tmp_path) -> None:
    from bamboo.db.engine import Database

    api = api_factory()
    api.state.db = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    api.state.bans._db = api.state.db
    try:
        async with api.client(headers=api.token_headers()) as client:
            response = await client.get("/api/v1/metaconfig/get_resource_types")
    finally:
        await api.state.db.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {
        "success": False,
        "message": "database error in the PanDA server",
        "data": None,
    }


async def test_multipart_form_is_parsed(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        response = await client.post(
            "/api/v1/system/is_alive", files={"file": ("a.txt", b"hello")}, data={"k": "v"}
        )
    assert envelope(response)["message"] == "expecting GET, received POST"
