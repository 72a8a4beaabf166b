"""The real panda-client uploading a sandbox to the real server process, reusing it, and fetching it back.

``Client.putFile(path, useCacheSrv=False, reuseSandbox=True)`` asks validate_cache_file first and
uploads with upload_cache_file only when the server knows no identical file of the user; the second
call of the same file is answered ``NewFileName:<name>``. The bytes then come back from
``/cache/<name>``, through ``Client.getFile`` and through a plain GET without credentials.
"""

from __future__ import annotations

import gzip
import os
import ssl
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Deployment

pytestmark = pytest.mark.e2e


# curl sends the file's base name; the urllib transport sends its full local path as the file name.
@pytest.mark.parametrize("transport", ["curl", "urllib"])
def test_put_file_reuses_the_sandbox_and_serves_it(deployment: Deployment, tmp_path: Path) -> None:
    work = tmp_path / "work area"
    work.mkdir()
    sandbox = work / f"sources.{uuid.uuid4()}.tar.gz"
    sandbox.write_bytes(gzip.compress(os.urandom(300_000)))
    user = deployment.user

    assert user("putFile", str(sandbox), useCacheSrv=False, reuseSandbox=True) == [0, "True"]
    assert user("putFile", str(sandbox), useCacheSrv=False, reuseSandbox=True) == [
        0,
        f"NewFileName:{sandbox.name}",
    ]

    fetched = tmp_path / "fetched.tar.gz"
    status, _ = user("getFile", sandbox.name, output_path=str(fetched))
    assert status == 0
    assert fetched.read_bytes() == sandbox.read_bytes()

    server = deployment.server
    with httpx.Client(verify=ssl.create_default_context(cafile=server.ca)) as client:
        plain = client.get(f"{server.http}/cache/{sandbox.name}")
        assert plain.status_code == 200 and plain.content == sandbox.read_bytes()
        tail = client.get(f"{server.https}/cache/{sandbox.name}", headers={"Range": "bytes=-8"})
        assert tail.status_code == 206 and tail.content == sandbox.read_bytes()[-8:]
        assert client.get(f"{server.http}/cache/sources.unknown.tar.gz").status_code == 404
