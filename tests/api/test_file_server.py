"""The file_server/* endpoints of api-v1.md §2.6, the /cache/ route and the cache cleaner, through the
real app on both databases: answers as the contract words them, refusals, hostile names, size
limits checked on the declared length and on the bytes, bombs, the quota and uploads streamed to disk.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AGENTS, AgentContext, AgentRunner
from bamboo.db.schema import cache_files
from bamboo.logic import files
from tests.api.conftest import ApiServer
from tests.conftest import FixedClock
from tests.tasks import NO_INPUT_TASK

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
API = "/api/v1/file_server"
JSON = {"Accept": "application/json", "Content-Type": "application/json"}
SECURE_REQUIRED = {"success": False, "message": "SSL secure connection is required", "data": None}
PRODUCTION_REQUIRED = {"success": False, "message": "production or pilot role required", "data": None}
OK = {"success": True, "message": "", "data": None}
NOT_A_FILE = {
    "success": False,
    "message": "Type error: 'file' must be an uploaded file (a multipart part with a file name).",
    "data": None,
}
ROBOT = ("Harvester Robot", "production")
NO_BUILD_ADVICE = (
    " Please submit the job without --noBuild/--libDS since those options impose a tighter size limit"
)


def envelope(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def sandbox(payload: bytes = b"print('hello')\n") -> bytes:
    return gzip.compress(payload, mtime=0)


def names_in(directory: Path) -> list[str]:
    """The names in a directory (none when it does not exist)."""
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def crc_of(data: bytes) -> int:
    """What panda-client sends as the checksum: the first uint32 of the last 8 bytes."""
    return int.from_bytes(data[-8:-4], "little")


def raw_multipart(filename: bytes, content: bytes, name: bytes = b"file") -> tuple[bytes, dict[str, str]]:
    """A multipart body written byte by byte, so hostile file names reach the server unescaped."""
    boundary = b"----bamboo" + uuid.uuid4().hex.encode()
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + boundary + b"--\r\n"
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


@pytest.fixture
def clock(api: ApiServer) -> FixedClock:
    fixed = FixedClock(T0)
    api.state.clock = fixed
    return fixed


@pytest.fixture
def cache_dir(api: ApiServer) -> Path:
    return api.state.settings.effective_cache_dir


class Session:
    """One caller's calls to the file server."""

    def __init__(self, api: ApiServer, headers: dict[str, str] | None, https: bool = True) -> None:
        self.api = api
        self.headers = headers or {}
        self.https = https

    def _client(self) -> httpx.AsyncClient:
        return self.api.client(https=self.https, headers={"Accept": "application/json", **self.headers})

    async def upload(self, function: str, filename: str, content: bytes, **extra: Any) -> httpx.Response:
        async with self._client() as client:
            return await client.post(f"{API}/{function}", files={"file": (filename, content)}, **extra)

    async def upload_raw(self, function: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        async with self._client() as client:
            return await client.post(f"{API}/{function}", content=body, headers=headers)

    async def post(self, function: str, **params: Any) -> httpx.Response:
        async with self._client() as client:
            return await client.post(f"{API}/{function}", json=params, headers=JSON)

    async def get(self, function: str, **params: Any) -> httpx.Response:
        async with self._client() as client:
            return await client.get(f"{API}/{function}", params=params)

    async def fetch(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> httpx.Response:
        async with self._client() as client:
            return await client.request(method, path, headers=headers)


@pytest.fixture
def jane(api: ApiServer) -> Session:
    return Session(api, api.token_headers("Jane Doe"))


@pytest.fixture
def john(api: ApiServer) -> Session:
    return Session(api, api.token_headers("John Smith"))


@pytest.fixture
def robot(api: ApiServer) -> Session:
    return Session(api, api.token_headers(*ROBOT))


@pytest.fixture
def anonymous(api: ApiServer) -> Session:
    return Session(api, None)


async def registry_rows(api: ApiServer) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        rows = await conn.execute(sa.select(cache_files).order_by(cache_files.c.file_name))
        return [dict(row._mapping) for row in rows]


# upload_cache_file, validate_cache_file


async def test_upload_registers_and_serves_a_sandbox(
    api: ApiServer, jane: Session, clock: FixedClock, cache_dir: Path
) -> None:
    data = sandbox()
    name = f"sources.{uuid.uuid4()}.tar.gz"
    # panda-client's native transport sends the full local path as the file name.
    response = await jane.upload("upload_cache_file", f"/home/jane/work/{name}", data)
    assert envelope(response) == OK
    assert (cache_dir / name).read_bytes() == data
    assert await registry_rows(api) == [
        {
            "host": "testserver",
            "file_name": name,
            "user_name": "Jane Doe",
            "file_size": len(data),
            "checksum": str(zlib.crc32(b"print('hello')\n")),
            "creation_time": T0,
        }
    ]
    assert str(crc_of(data)) == str(zlib.crc32(b"print('hello')\n"))
    found = await jane.post("validate_cache_file", file_size=len(data), checksum=crc_of(data))
    assert envelope(found) == {"success": True, "message": f"FOUND:testserver:{name}", "data": None}
    served = await jane.fetch(f"/cache/{name}")
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "application/gzip"
    assert "content-encoding" not in served.headers


async def test_a_hostile_host_header_is_not_recorded(api: ApiServer, jane: Session) -> None:
    async with jane._client() as client:
        response = await client.post(
            f"{API}/upload_cache_file",
            files={"file": ("sources.h.tar.gz", b"data")},
            headers={"Host": "x" * 300},
        )
    assert envelope(response) == OK
    assert [row["host"] for row in await registry_rows(api)] == ["localhost"]


async def test_validate_is_per_user_recent_and_needs_the_file(
    api: ApiServer, jane: Session, john: Session, clock: FixedClock, cache_dir: Path
) -> None:
    data = sandbox(b"abc")
    name = "sources.reuse.tar.gz"
    assert envelope(await jane.upload("upload_cache_file", name, data)) == OK
    notfound = {"success": False, "message": "NOTFOUND", "data": None}
    # Another user's file, another size or checksum: not reusable.
    assert (
        envelope(await john.post("validate_cache_file", file_size=len(data), checksum=crc_of(data)))
        == notfound
    )
    assert (
        envelope(await jane.post("validate_cache_file", file_size=len(data) + 1, checksum=crc_of(data)))
        == notfound
    )
    assert envelope(await jane.post("validate_cache_file", file_size=len(data), checksum="1")) == notfound
    # The checksum may come as a string too.
    found = await jane.post("validate_cache_file", file_size=len(data), checksum=str(crc_of(data)))
    assert envelope(found)["message"] == f"FOUND:testserver:{name}"
    clock.set(T0 + timedelta(days=3, seconds=1))
    assert (
        envelope(await jane.post("validate_cache_file", file_size=len(data), checksum=crc_of(data)))
        == notfound
    )
    clock.set(T0 + timedelta(days=1))
    (cache_dir / name).unlink()
    assert (
        envelope(await jane.post("validate_cache_file", file_size=len(data), checksum=crc_of(data)))
        == notfound
    )


async def test_validate_bad_parameters_and_callers(jane: Session, anonymous: Session) -> None:
    assert envelope(await anonymous.post("validate_cache_file", file_size=1, checksum=1)) == SECURE_REQUIRED
    assert envelope(await jane.post("validate_cache_file", checksum=1)) == {
        "success": False,
        "message": "Argument error: missing a required argument: 'file_size'",
        "data": None,
    }
    assert envelope(await jane.post("validate_cache_file", file_size="x", checksum=1))["message"] == (
        "Type error: 'file_size' must be of type int, got str."
    )
    async with jane._client() as client:
        wrong_method = await client.get(f"{API}/validate_cache_file", params={"file_size": 1, "checksum": 1})
    assert envelope(wrong_method)["message"] == "expecting POST, received GET"


async def test_no_overwrite_but_touch_and_the_overwrite_suffix(
    api: ApiServer, jane: Session, john: Session, clock: FixedClock, cache_dir: Path
) -> None:
    name = "sources.keep.tar.gz"
    assert envelope(await jane.upload("upload_cache_file", name, sandbox(b"one"))) == OK
    old = (T0 - timedelta(days=5)).timestamp()
    os.utime(cache_dir / name, (old, old))
    again = await jane.upload("upload_cache_file", name, sandbox(b"two"))
    assert envelope(again) == {"success": False, "message": "ERROR: cannot overwrite file", "data": None}
    assert gzip.decompress((cache_dir / name).read_bytes()) == b"one"
    assert (cache_dir / name).stat().st_mtime == T0.timestamp()
    persistent = "sources.abc.__ow__"
    assert envelope(await jane.upload("upload_cache_file", persistent, sandbox(b"v1"))) == OK
    assert envelope(await jane.upload("upload_cache_file", persistent, sandbox(b"v2"))) == OK
    assert gzip.decompress((cache_dir / persistent).read_bytes()) == b"v2"
    rows = [row for row in await registry_rows(api) if row["file_name"] == persistent]
    assert [(row["user_name"], row["checksum"]) for row in rows] == [("Jane Doe", str(zlib.crc32(b"v2")))]
    # Nobody replaces another user's persistent sandbox.
    stolen = await john.upload("upload_cache_file", persistent, sandbox(b"evil"))
    assert envelope(stolen)["message"] == "ERROR: cannot overwrite file"
    assert gzip.decompress((cache_dir / persistent).read_bytes()) == b"v2"


async def test_upload_refusals(api: ApiServer, jane: Session, anonymous: Session) -> None:
    assert envelope(await anonymous.upload("upload_cache_file", "sources.a.tar.gz", b"x")) == SECURE_REQUIRED
    # A token on plain HTTP is no identity by default (DESIGN §9.5).
    plain = Session(api, api.token_headers("Jane Doe"), https=False)
    assert envelope(await plain.upload("upload_cache_file", "sources.a.tar.gz", b"x")) == SECURE_REQUIRED
    assert envelope(await jane.post("upload_cache_file", file="not a file")) == NOT_A_FILE
    assert envelope(await jane.post("upload_cache_file")) == {
        "success": False,
        "message": "Argument error: missing a required argument: 'file'",
        "data": None,
    }
    # A text field named file is not a file either.
    async with jane._client() as client:
        field = await client.post(f"{API}/upload_cache_file", files={"file": (None, b"text")})
    assert envelope(field) == NOT_A_FILE


async def test_size_limits_by_name_on_the_declared_length_and_on_the_bytes(
    jane: Session, cache_dir: Path
) -> None:
    over = b"x" * (files.NO_BUILD_LIMIT + 1)
    declared = await jane.upload("upload_cache_file", "nobuild.tar.gz", over)
    assert envelope(declared) == {
        "success": False,
        "message": f"ERROR: upload failure. Exceeded size limit 10 MB > 10 MB.{NO_BUILD_ADVICE}",
        "data": None,
    }
    body, headers = raw_multipart(b"nobuild2.tar.gz", over)

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + 1 << 20]

    async with jane._client() as client:
        streamed = await client.post(f"{API}/upload_cache_file", content=chunked(), headers=headers)
    assert "content-length" not in streamed.request.headers
    assert envelope(streamed)["message"] == (
        f"ERROR: upload failure. Exceeded size limit 10 MB > 10 MB.{NO_BUILD_ADVICE}"
    )
    # Logs (*.out) may be 100 MB: 11 MB passes.
    assert envelope(await jane.upload("upload_cache_file", "job.out", over)) == OK
    assert not (cache_dir / "nobuild.tar.gz").exists() and not (cache_dir / "nobuild2.tar.gz").exists()


async def test_a_body_past_the_endpoint_limit_is_refused_before_parsing(jane: Session) -> None:
    body, headers = raw_multipart(b"sources.big.tar.gz", b"")
    headers["Content-Length"] = str(files.LARGEST_UPLOAD + files.MULTIPART_OVERHEAD + 1)
    async with jane._client() as client:
        request = client.build_request("POST", f"{API}/upload_cache_file", content=body, headers=headers)
        response = await client.send(request)
    assert response.status_code == 413
    assert response.text.startswith("ERROR : request body larger than")


async def test_other_endpoints_keep_the_global_body_limit(api: ApiServer, jane: Session) -> None:
    limit = api.state.settings.max_body_bytes
    body, headers = raw_multipart(b"f", b"x" * (limit + 1))
    response = await jane.upload_raw("touch_cache_file", body, headers)
    assert response.status_code == 413
    # An upload endpoint takes JSON and form-urlencoded bodies only up to the global limit too.
    async with jane._client() as client:
        form = await client.post(f"{API}/upload_cache_file", data={"file": "x" * (limit + 1)})
    assert form.status_code == 413


async def test_a_large_upload_is_streamed_to_disk_not_memory(
    api: ApiServer, jane: Session, tmp_path: Path
) -> None:
    size = 40 * files.MB  # past the global body limit, far past what the request may hold in memory
    local = tmp_path / "sources.large.tar.gz"
    with local.open("wb") as out:
        for _ in range(size // files.MB):
            out.write(os.urandom(files.MB))
    tracemalloc.start()
    try:
        with local.open("rb") as source:
            response = await jane.upload("upload_cache_file", str(local), source)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert envelope(response) == OK
    assert peak < 8 * files.MB, f"peak {peak} bytes for a {size}-byte upload"
    stored = api.state.settings.effective_cache_dir / local.name
    assert stored.stat().st_size == size
    # The spooled part was removed with the request: nothing left in the upload directory.
    assert list(api.state.settings.upload_temp_path.iterdir()) == []


def open_files_under(directory: Path) -> list[str]:
    """What this process has open inside ``directory`` (unnamed temporary files show as deleted)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [target for target in targets if target.startswith(f"{directory}/")]


async def test_the_part_is_spooled_in_the_upload_directory_and_closed(api: ApiServer, jane: Session) -> None:
    spool = api.state.settings.upload_temp_path
    body, headers = raw_multipart(b"sources.spool.tar.gz", b"y" * (4 * files.MB))
    seen_while_sending: list[list[str]] = []

    async def slowly() -> AsyncIterator[bytes]:
        for start in range(0, len(body), files.MB):
            yield body[start : start + files.MB]
            seen_while_sending.append(open_files_under(spool))

    async with jane._client() as client:
        response = await client.post(f"{API}/upload_cache_file", content=slowly(), headers=headers)
    assert envelope(response) == OK
    assert any(seen_while_sending), "the file part was not spooled in upload_temp_dir"
    assert open_files_under(spool) == []


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        (b"", "empty file name"),
        (b"/home/jane/", "empty file name"),
        (b"..", "file name '..' is not a file"),
        (b"work/..", "file name '..' is not a file"),
        (b".", "file name '.' is not a file"),
        (b".bashrc", "file name starting with a dot"),
        (b"a\x01b", "file name with control characters"),
        (b"new\nline", "file name with control characters"),
        (b"a" * 256, "file name longer than 255 bytes"),
        (b"with space", "file name with characters other than letters, digits and ._+=,@~-"),
        (b"semi;colon", "file name with characters other than letters, digits and ._+=,@~-"),
    ],
)
async def test_hostile_file_names_are_refused(
    jane: Session, cache_dir: Path, filename: bytes, reason: str
) -> None:
    body, headers = raw_multipart(filename, b"data")
    response = await jane.upload_raw("upload_cache_file", body, headers)
    assert envelope(response) == {
        "success": False,
        "message": f"ERROR: invalid file name: {reason}",
        "data": None,
    }
    assert names_in(cache_dir) == []


@pytest.mark.parametrize(
    "filename", [b"../../../outside.txt", b"..\\..\\outside.txt", b"/etc/../outside.txt"]
)
async def test_traversal_is_reduced_to_the_base_name(jane: Session, cache_dir: Path, filename: bytes) -> None:
    body, headers = raw_multipart(filename, b"data")
    assert envelope(await jane.upload_raw("upload_cache_file", body, headers)) == OK
    assert names_in(cache_dir) == ["outside.txt"]
    assert not (cache_dir.parent / "outside.txt").exists()


async def test_malformed_multipart_is_a_bad_request(jane: Session) -> None:
    body, headers = raw_multipart(b"a.txt", b"data")
    response = await jane.upload_raw("upload_cache_file", body, {"Content-Type": "multipart/form-data"})
    assert response.status_code == 400
    assert response.text == "ERROR : received invalid form data : missing boundary in multipart"
    # Each header is small; together they pass the bound.
    padding = b"".join(b"X-Padding-%d: %s\r\n" % (i, b"p" * 4000) for i in range(5))
    many_headers = body.replace(b"Content-Type:", padding + b"Content-Type:")
    response = await jane.upload_raw("upload_cache_file", many_headers, headers)
    assert response.status_code == 400
    assert response.text == "ERROR : received invalid form data : part headers longer than 16384 bytes"
    no_name = body.replace(b'name="file"; ', b"")
    response = await jane.upload_raw("upload_cache_file", no_name, headers)
    assert response.status_code == 400
    assert "name" in response.text


# quota, delete_cache_file, touch_cache_file, register_cache_file


async def test_user_quota(api_factory: Any) -> None:
    api = api_factory(file_cache_user_quota_bytes=1000)
    jane, john = Session(api, api.token_headers("Jane Doe")), Session(api, api.token_headers("John Smith"))
    assert envelope(await jane.upload("upload_cache_file", "sources.1.tar.gz", b"x" * 600)) == OK
    refused = await jane.upload("upload_cache_file", "sources.2.tar.gz", b"x" * 600)
    assert envelope(refused) == {
        "success": False,
        "message": "ERROR: upload failure. Exceeded the cache quota of 0 MB per user: 0 MB in use + 0 MB. "
        "Unused files expire, or delete them with delete_cache_file",
        "data": None,
    }
    assert not (api.state.settings.effective_cache_dir / "sources.2.tar.gz").exists()
    assert envelope(await john.upload("upload_cache_file", "sources.3.tar.gz", b"x" * 600)) == OK
    assert envelope(await jane.post("delete_cache_file", file_name="sources.1.tar.gz")) == OK
    assert envelope(await jane.upload("upload_cache_file", "sources.2.tar.gz", b"x" * 600)) == OK


async def test_delete_cache_file_only_the_callers_own(
    api: ApiServer, jane: Session, john: Session, anonymous: Session, cache_dir: Path
) -> None:
    assert envelope(await jane.upload("upload_cache_file", "sources.d.tar.gz", b"data")) == OK
    assert envelope(await john.post("delete_cache_file", file_name="sources.d.tar.gz")) == {
        "success": False,
        "message": "ERROR: sources.d.tar.gz is not a registered cache file of John Smith",
        "data": None,
    }
    assert (cache_dir / "sources.d.tar.gz").exists()
    assert (
        envelope(await anonymous.post("delete_cache_file", file_name="sources.d.tar.gz")) == SECURE_REQUIRED
    )
    assert envelope(await jane.post("delete_cache_file", file_name="../x/..")) == {
        "success": False,
        "message": "ERROR: invalid file name: file name '..' is not a file",
        "data": None,
    }
    assert envelope(await jane.post("delete_cache_file", file_name="sources.d.tar.gz")) == OK
    assert not (cache_dir / "sources.d.tar.gz").exists()
    assert await registry_rows(api) == []
    assert envelope(await jane.post("delete_cache_file", file_name="sources.d.tar.gz"))["success"] is False


async def test_touch_cache_file(
    jane: Session, anonymous: Session, clock: FixedClock, cache_dir: Path
) -> None:
    assert envelope(await jane.upload("upload_cache_file", "sources.t.tar.gz", b"data")) == OK
    clock.set(T0 + timedelta(days=2))
    assert envelope(await jane.post("touch_cache_file", file_name="sources.t.tar.gz")) == OK
    assert (cache_dir / "sources.t.tar.gz").stat().st_mtime == (T0 + timedelta(days=2)).timestamp()
    assert envelope(await jane.post("touch_cache_file", file_name="nothing.here")) == {
        "success": False,
        "message": "Failed to touch file with: FileNotFoundError no such file: nothing.here",
        "data": None,
    }
    assert envelope(await jane.post("touch_cache_file", file_name=".."))["message"] == (
        "Failed to touch file with: ValueError file name '..' is not a file"
    )
    assert envelope(await anonymous.post("touch_cache_file", file_name="sources.t.tar.gz")) == SECURE_REQUIRED


async def test_register_cache_file(api: ApiServer, robot: Session, jane: Session, clock: FixedClock) -> None:
    params = {"user_name": "Jane Doe", "file_name": "sources.r.tar.gz", "file_size": 10, "checksum": "123"}
    assert envelope(await jane.post("register_cache_file", **params)) == PRODUCTION_REQUIRED
    assert envelope(await robot.post("register_cache_file", **params)) == OK
    assert envelope(await robot.post("register_cache_file", **params)) == {
        "success": False,
        "message": "WARNING: file exist",
        "data": None,
    }
    rows = await registry_rows(api)
    assert [(row["user_name"], row["file_name"], row["file_size"], row["checksum"]) for row in rows] == [
        ("Jane Doe", "sources.r.tar.gz", 10, "123")
    ]
    bad = await robot.post("register_cache_file", **{**params, "file_name": "../../x/.."})
    assert envelope(bad)["message"] == "ERROR: invalid file name: file name '..' is not a file"
    assert envelope(await robot.post("register_cache_file", **{**params, "file_size": -1}))["message"] == (
        "ERROR: file_size must not be negative"
    )
    missing = await robot.post("register_cache_file", user_name="x", file_name="y", file_size=1)
    assert envelope(missing)["message"] == "Argument error: missing a required argument: 'checksum'"


# JEDI logs


async def test_upload_update_and_download_a_jedi_log(
    api: ApiServer, robot: Session, jane: Session, cache_dir: Path
) -> None:
    uploaded = await robot.upload("upload_jedi_log", "/tmp/logs/task.1234.log", b"first line\n")
    assert envelope(uploaded) == {
        "success": True,
        "message": "",
        "data": "https://testserver/cache/jedilog/task.1234.log",
    }
    served = await jane.fetch("/cache/jedilog/task.1234.log")
    assert served.status_code == 200 and served.text == "first line\n"
    assert served.headers["content-type"] == "text/plain; charset=utf-8"
    assert envelope(await robot.upload("upload_jedi_log", "task.1234.log", b"replaced\n")) == OK | {
        "data": "https://testserver/cache/jedilog/task.1234.log"
    }
    assert (cache_dir / "jedilog" / "task.1234.log").read_bytes() == b"replaced\n"
    # update_jedi_log appends zlib pieces to <cache>/<name>.
    assert envelope(await robot.upload("update_jedi_log", "worker.log", zlib.compress(b"one\n"))) == OK
    assert envelope(await robot.upload("update_jedi_log", "worker.log", zlib.compress(b"two\n"))) == OK
    assert (cache_dir / "worker.log").read_bytes() == b"one\ntwo\n"
    log = await jane.get("download_jedi_log", log_name="some/dir/worker.log")
    assert log.status_code == 200 and log.json() == " one\ntwo\n"
    assert (await jane.get("download_jedi_log", log_name="worker.log", offset=4)).json() == " two\n"
    assert (await jane.get("download_jedi_log", log_name="missing.log")).json() == " "
    assert (await jane.get("download_jedi_log", log_name="..")).json() == " "
    assert (await jane.get("download_jedi_log", log_name="worker.log", offset=-1)).json() == " "


async def test_jedi_log_refusals(robot: Session, jane: Session, anonymous: Session, cache_dir: Path) -> None:
    for function in ("upload_jedi_log", "update_jedi_log"):
        assert envelope(await jane.upload(function, "a.log", b"x")) == PRODUCTION_REQUIRED
        assert envelope(await anonymous.upload(function, "a.log", b"x")) == SECURE_REQUIRED
        assert envelope(await robot.post(function, file="x")) == NOT_A_FILE
    assert envelope(await anonymous.get("download_jedi_log", log_name="a.log")) == SECURE_REQUIRED
    assert envelope(await jane.get("download_jedi_log"))["message"] == (
        "Argument error: missing a required argument: 'log_name'"
    )
    too_big = await robot.upload("upload_jedi_log", "big.log", b"x" * (files.JEDI_LOG_LIMIT + 1))
    assert envelope(too_big) == {
        "success": False,
        "message": "ERROR: upload failure. Exceeded size limit",
        "data": None,
    }
    broken = await robot.upload("update_jedi_log", "w.log", b"not zlib at all")
    assert envelope(broken)["message"].startswith("ERROR: cannot update file with <class 'zlib.error'>")
    truncated = await robot.upload("update_jedi_log", "w.log", zlib.compress(b"x" * 1000)[:-4])
    assert envelope(truncated)["message"].startswith("ERROR: cannot update file with <class 'zlib.error'>")
    assert not (cache_dir / "w.log").exists()


async def test_a_zlib_bomb_is_refused_without_writing(robot: Session, cache_dir: Path) -> None:
    bomb = zlib.compress(b"\0" * (files.JEDI_LOG_LIMIT + 1), 9)
    assert len(bomb) < files.MB
    tracemalloc.start()
    try:
        response = await robot.upload("update_jedi_log", "bomb.log", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert envelope(response) == {
        "success": False,
        "message": "ERROR: upload failure. Exceeded size limit",
        "data": None,
    }
    assert peak < 16 * files.MB
    assert not (cache_dir / "bomb.log").exists()


async def test_a_gzip_bomb_body_is_refused(api: ApiServer, jane: Session) -> None:
    bomb = gzip.compress(b" " * (api.state.settings.max_body_bytes + 1))
    async with jane._client() as client:
        response = await client.post(
            f"{API}/upload_cache_file", content=bomb, headers={**JSON, "Content-Encoding": "gzip"}
        )
    assert response.status_code == 413


async def test_update_jedi_log_does_not_touch_sandboxes(
    robot: Session, jane: Session, cache_dir: Path
) -> None:
    assert envelope(await jane.upload("upload_cache_file", "sources.s.tar.gz", b"data")) == OK
    refused = await robot.upload("update_jedi_log", "sources.s.tar.gz", zlib.compress(b"more"))
    assert envelope(refused)["message"] == "ERROR: cannot update file with sources.s.tar.gz: not a log"
    assert (cache_dir / "sources.s.tar.gz").read_bytes() == b"data"


# HPO checkpoints


async def submit_task(api: ApiServer, user: str) -> int:
    async with api.client(headers=api.token_headers(user)) as client:
        submitted = (await client.post("/api/v1/task/submit", json={"task_parameters": NO_INPUT_TASK})).json()
    assert submitted["success"] is True, submitted
    return submitted["data"]


async def test_hpo_checkpoints(
    api: ApiServer, jane: Session, john: Session, robot: Session, cache_dir: Path
) -> None:
    task_id = await submit_task(api, "Jane Doe")
    placed = await jane.upload("upload_hpo_checkpoint", f"{task_id}_7", b"checkpoint")
    assert envelope(placed) == {
        "success": True,
        "message": f"Successfully placed at /cache/hpo_cp_{task_id}_7",
        "data": f"/cache/hpo_cp_{task_id}_7",
    }
    fetched = await anonymous_fetch(api, f"/cache/hpo_cp_{task_id}_7")
    assert fetched.content == b"checkpoint"
    assert envelope(await robot.upload("upload_hpo_checkpoint", f"{task_id}_7", b"newer"))["success"] is True
    assert (cache_dir / f"hpo_cp_{task_id}_7").read_bytes() == b"newer"
    not_owner = {"success": False, "message": "not the task owner or no production role", "data": None}
    assert envelope(await john.upload("upload_hpo_checkpoint", f"{task_id}_7", b"x")) == not_owner
    assert envelope(await john.post("delete_hpo_checkpoint", task_id=str(task_id), sub_id="7")) == not_owner
    assert envelope(await jane.upload("upload_hpo_checkpoint", "12_x", b"x")) == {
        "success": False,
        "message": "Failed to extract task and sub IDs",
        "data": None,
    }
    assert envelope(await jane.post("delete_hpo_checkpoint", task_id=str(task_id), sub_id="7")) == OK
    assert not (cache_dir / f"hpo_cp_{task_id}_7").exists()
    assert envelope(await jane.post("delete_hpo_checkpoint", task_id=str(task_id), sub_id="7")) == {
        "success": False,
        "message": f"Failed to delete file due to no such checkpoint: hpo_cp_{task_id}_7",
        "data": None,
    }
    assert envelope(await jane.post("delete_hpo_checkpoint", task_id="../1", sub_id="7"))["message"] == (
        "Failed to delete file due to task_id and sub_id not being integers"
    )
    assert envelope(await jane.post("delete_hpo_checkpoint", task_id=1, sub_id="7"))["message"] == (
        "Type error: 'task_id' must be of type str, got int."
    )


async def test_hpo_checkpoint_limits(api: ApiServer, robot: Session, anonymous: Session) -> None:
    assert envelope(await anonymous.upload("upload_hpo_checkpoint", "1_2", b"x")) == SECURE_REQUIRED
    body, headers = raw_multipart(b"1_2", b"x" * 100)

    async def chunked() -> AsyncIterator[bytes]:
        yield body

    async with robot._client() as client:
        no_length = await client.post(f"{API}/upload_hpo_checkpoint", content=chunked(), headers=headers)
    assert envelope(no_length) == {"success": False, "message": "Cannot get content-length", "data": None}
    declared = str(files.HPO_CHECKPOINT_LIMIT + 1)
    body, headers = raw_multipart(b"1_2", b"x" * 100)
    async with robot._client() as client:
        request = client.build_request(
            "POST",
            f"{API}/upload_hpo_checkpoint",
            content=body,
            headers={**headers, "Content-Length": declared},
        )
        # The declared length is larger than the body: the server reads what comes and refuses by it.
        response = await client.send(request)
    assert envelope(response)["message"] == f"Exceeded size limit {declared}>{files.HPO_CHECKPOINT_LIMIT}"


async def anonymous_fetch(api: ApiServer, path: str, **headers: str) -> httpx.Response:
    async with api.client(https=False) as client:
        return await client.get(path, headers=headers)


# The /cache/ route


async def test_cache_route_ranges_validators_and_head(api: ApiServer, jane: Session) -> None:
    content = bytes(range(256)) * 4
    assert envelope(await jane.upload("upload_cache_file", "sources.r.tar.gz", content)) == OK
    path = "/cache/sources.r.tar.gz"
    whole = await anonymous_fetch(api, path)
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["accept-ranges"] == "bytes"
    etag, last_modified = whole.headers["etag"], whole.headers["last-modified"]
    part = await anonymous_fetch(api, path, Range="bytes=10-19")
    assert part.status_code == 206 and part.content == content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(content)}"
    suffix = await anonymous_fetch(api, path, Range="bytes=-5")
    assert suffix.status_code == 206 and suffix.content == content[-5:]
    open_ended = await anonymous_fetch(api, path, Range="bytes=1000-")
    assert open_ended.status_code == 206 and open_ended.content == content[1000:]
    past_end = await anonymous_fetch(api, path, Range="bytes=1020-5000")
    assert past_end.status_code == 206 and past_end.content == content[1020:]
    unsatisfiable = await anonymous_fetch(api, path, Range=f"bytes={len(content)}-")
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(content)}"
    several = await anonymous_fetch(api, path, Range="bytes=0-1,5-6")
    assert several.status_code == 200 and several.content == content
    garbage = await anonymous_fetch(api, path, Range="pages=1-2")
    assert garbage.status_code == 200
    stale_if_range = await anonymous_fetch(api, path, Range="bytes=0-1", **{"If-Range": '"other"'})
    assert stale_if_range.status_code == 200 and stale_if_range.content == content
    assert (await anonymous_fetch(api, path, **{"If-None-Match": etag})).status_code == 304
    assert (await anonymous_fetch(api, path, **{"If-None-Match": '"other"'})).status_code == 200
    assert (await anonymous_fetch(api, path, **{"If-Modified-Since": last_modified})).status_code == 304
    assert (
        await anonymous_fetch(api, path, **{"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    ).status_code == 200
    async with api.client(https=False) as client:
        head = await client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(content))


@pytest.mark.parametrize(
    "path",
    [
        "/cache/nothing.tar.gz",
        "/cache/",
        "/cache/..%2F..%2Fhome%2Fbamboo.db",
        "/cache/%2e%2e/bamboo.db",
        "/cache/jedilog/../../bamboo.db",
        "/cache/a/b/c",
        "/cache/.tmp-x",
        "/cache/jedilog",
    ],
)
async def test_cache_route_unknown_and_traversal_are_404(api: ApiServer, jane: Session, path: str) -> None:
    assert envelope(await robot_upload_log(api)) == OK | {"data": "https://testserver/cache/jedilog/x.log"}
    response = await anonymous_fetch(api, path)
    assert response.status_code == 404
    assert response.text.startswith("ERROR : ")


async def robot_upload_log(api: ApiServer) -> httpx.Response:
    return await Session(api, api.token_headers(*ROBOT)).upload("upload_jedi_log", "x.log", b"log")


# The cleaner


async def test_cleaner_expires_files_and_rows(api: ApiServer, jane: Session, clock: FixedClock) -> None:
    cache = api.state.settings.effective_cache_dir
    for name in ("sources.old.tar.gz", "sources.new.tar.gz"):
        assert envelope(await jane.upload("upload_cache_file", name, sandbox(name.encode()))) == OK
    assert envelope(await robot_upload_log(api))["success"] is True
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(cache_files).values(
                host="elsewhere",
                file_name="sources.gone.tar.gz",
                user_name="Jane Doe",
                file_size=1,
                checksum="1",
                creation_time=T0,
            )
        )
    (cache / ".tmp-leftover").write_bytes(b"half")
    ancient = (T0 - timedelta(days=2)).timestamp()
    os.utime(cache / ".tmp-leftover", (ancient, ancient))
    clock.set(T0 + timedelta(days=7, hours=1))
    # The new sandbox was used meanwhile: it stays.
    assert envelope(await jane.post("touch_cache_file", file_name="sources.new.tar.gz")) == OK
    cleaner = next(agent for agent in AGENTS if agent.name == "file_cleaner")
    runner = AgentRunner(
        AgentContext(api.state.db, clock, api.state.dm, settings=api.state.settings), agents=[cleaner]
    )
    for name in ("sources.old.tar.gz", "jedilog/x.log"):
        os.utime(cache / name, (T0.timestamp(), T0.timestamp()))
    assert await runner.run_once("file_cleaner") == 5  # two rows, two files, one temporary
    assert sorted(path.name for path in cache.iterdir() if path.is_file()) == ["sources.new.tar.gz"]
    assert list((cache / "jedilog").iterdir()) == []
    assert [row["file_name"] for row in await registry_rows(api)] == ["sources.new.tar.gz"]
    assert await runner.run_once("file_cleaner") == 0
