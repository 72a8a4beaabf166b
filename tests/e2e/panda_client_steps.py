"""Run calls of the real panda-client for a test: one JSON request per input line, one JSON reply per line.

A request is ``{"call": "<pandaclient.Client function>", "args": [...], "kwargs": {...}}``; the reply is
``{"result": <what the function returned>}`` or ``{"error": "<traceback>"}``. A request may carry
``"job_specs": [<job dict>, ...]``: panda-client's own loader turns them into JobSpec objects, passed
as the first argument (``submitJobs`` takes JobSpecs, which JSON cannot carry). panda-client reads its
configuration (server URLs, auth mode, token) from the environment when ``pandaclient.Client`` is imported,
so the test starts one such process per server, with that server's settings in its environment.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
from typing import Any, TextIO


def _plain(value: Any) -> Any:
    """JSON-ready copy of a panda-client result: tuples as lists, job and file specs as dicts."""
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if hasattr(value, "_attributes"):
        record = {name: _plain(getattr(value, name)) for name in value._attributes}
        if hasattr(value, "Files"):
            record["Files"] = [_plain(spec) for spec in value.Files]
        return record
    return value


def serve(requests: TextIO, replies: TextIO) -> None:
    from pandaclient import Client, MiscUtils

    for line in requests:
        request = json.loads(line)
        try:
            function = getattr(Client, request["call"])
            args = request.get("args", [])
            if "job_specs" in request:
                args = [MiscUtils.load_jobs(request["job_specs"]), *args]
            reply = {"result": _plain(function(*args, **request.get("kwargs", {})))}
        except Exception:
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    # panda-client prints diagnostics (and curl may write) on standard output; keep the reply channel
    # private by moving everything else written to fd 1 over to standard error.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
