"""Default transformations of user analysis tasks (domain.md §1.1: "plugins fill a default wrapper URL").

panda-client's ``prun`` sends no ``transPath`` and a ``buildSpec`` without one: the server decides
what runs its jobs. The refiner points such tasks at Bamboo's own generic transformations
(``bamboo/trf``): ``<base>/trf/user/runGen-00-00-02`` for the run jobs and
``<base>/trf/user/buildGen-00-00-01`` for the build job. ``<base>`` is the ``public_url`` setting,
else the task's ``sourceURL``: the server prun uploaded the sandbox to, which the jobs fetch their
sandbox from anyway, so taking the script from it trusts no one new (and a user could name any
transformation in ``transPath`` instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from bamboo import trf
from bamboo.db.schema import tasks
from bamboo.logic.errors import InvalidInput

_TRANS_PATH_CHARS = tasks.c.transPath.type.length


def with_defaults(params: Mapping[str, Any], public_url: str | None) -> dict[str, Any] | None:
    """The parameters with the default transformations filled in, or None when none is missing
    (or the task is not an analysis task, or no base URL is known).

    Raises:
        InvalidInput: the default URL does not fit the task's ``transPath`` column.
    """
    if params.get("taskType") != "anal":
        return None
    base = public_url or _source_base(params.get("sourceURL"))
    if base is None:
        return None
    filled = dict(params)
    if not params.get("transPath"):
        filled["transPath"] = _checked(trf.url(base, trf.RUN_GEN))
    build = params.get("buildSpec")
    if isinstance(build, Mapping) and not build.get("transPath"):
        filled["buildSpec"] = {**build, "transPath": _checked(trf.url(base, trf.BUILD_GEN))}
    return filled if filled != params else None


def _source_base(source_url: Any) -> str | None:
    """``scheme://host[:port]`` of a task's sourceURL, when it is an http(s) URL of a server."""
    if not isinstance(source_url, str):
        return None
    parts = urlsplit(source_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _checked(url: str) -> str:
    if len(url) > _TRANS_PATH_CHARS:
        raise InvalidInput(
            f"default transformation URL {url!r} is longer than {_TRANS_PATH_CHARS} characters"
        )
    return url
