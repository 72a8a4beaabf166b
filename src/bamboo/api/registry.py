"""The one declaration of every endpoint: route, HTTP method, access level, parameters.

An endpoint is an async function in ``api/v1/<module>.py`` decorated with ``@module.endpoint(...)``.
Its signature *is* the parameter declaration: each parameter after ``call`` has an
``Annotated[<type>, "<description>"]`` annotation and, when optional, a default. The dispatcher,
the validation of api-v1.md §1.5 and the OpenAPI document are all derived from this registry.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bamboo.api.params import REQUIRED, ParamType


class Access(Enum):
    """Who may call an endpoint (api-v1.md §1.5 options ``secure`` and ``production``)."""

    PUBLIC = "public"
    SECURE = "secure"
    PRODUCTION = "production"
    # Secure, and the task named by ``task_id`` must be the caller's unless it has the production
    # role (api-v1.md §1.8); checked by the dispatcher inside the request's transaction.
    OWNER = "owner"


class DbUse(Enum):
    """What transaction the dispatcher opens around the handler."""

    NONE = "none"
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: ParamType
    default: Any
    description: str

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True, slots=True)
class Endpoint:
    module: str
    function: str
    method: str | None
    access: Access
    db: DbUse
    params: tuple[Param, ...]
    accepts_extra: bool
    summary: str
    description: str
    handler: Callable[..., Awaitable[Any]]
    # Upstream answers these with the handler's bare string instead of an envelope
    # (api-v1.md §1.3); pipeline refusals are still envelopes.
    answers_text: bool = False
    # Largest multipart body the endpoint takes (its file parts are spooled to disk); None: the
    # server's max_body_bytes, like every other body.
    max_body_bytes: int | None = None

    @property
    def path(self) -> str:
        return f"/api/v1/{self.module}/{self.function}"


class Registry:
    """All endpoints, keyed by (URL module, function)."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[str, str], Endpoint] = {}

    def add(self, endpoint: Endpoint) -> None:
        key = (endpoint.module, endpoint.function)
        if key in self._endpoints:
            raise ValueError(f"endpoint {endpoint.path} declared twice")
        self._endpoints[key] = endpoint

    def lookup(self, module: str, function: str) -> Endpoint | None:
        return self._endpoints.get((module, function))

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(sorted(self._endpoints.values(), key=lambda e: (e.module, e.function)))

    def __len__(self) -> int:
        return len(self._endpoints)


class Module:
    """The endpoints of one URL module (``task``, ``creds``, ``system``...)."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name

    def endpoint(
        self,
        *,
        method: str | None,
        access: Access = Access.SECURE,
        db: DbUse = DbUse.READ,
        answers_text: bool = False,
        max_body_bytes: int | None = None,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """Declare the decorated coroutine as ``/api/v1/<module>/<function name>``.

        Args:
            method: the only HTTP method accepted (``"GET"``/``"POST"``), or None for any.
            access: public, secure (an identity is needed) or production role.
            db: the transaction to open around the call.
            answers_text: the handler returns :class:`~bamboo.api.envelope.BareText`, sent as a
                JSON string without the envelope.
            max_body_bytes: for upload endpoints, the largest multipart body accepted instead of
                the server's ``max_body_bytes``; JSON and form-urlencoded bodies keep that limit.
        """

        def declare(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            params, accepts_extra = _params_of(handler)
            doc = inspect.getdoc(handler) or ""
            summary, _, description = doc.partition("\n\n")
            if not summary:
                raise ValueError(f"{self.name}/{handler.__name__} needs a docstring")
            self.registry.add(
                Endpoint(
                    module=self.name,
                    function=handler.__name__,
                    method=method,
                    access=access,
                    db=db,
                    params=params,
                    accepts_extra=accepts_extra,
                    summary=summary.replace("\n", " "),
                    description=description,
                    handler=handler,
                    answers_text=answers_text,
                    max_body_bytes=max_body_bytes,
                )
            )
            return handler

        return declare


def _params_of(handler: Callable[..., Any]) -> tuple[tuple[Param, ...], bool]:
    hints = typing.get_type_hints(handler, include_extras=True)
    signature = inspect.signature(handler)
    params: list[Param] = []
    accepts_extra = False
    for index, parameter in enumerate(signature.parameters.values()):
        if index == 0:
            continue  # the Call
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
            continue
        hint = hints.get(parameter.name)
        if typing.get_origin(hint) is not typing.Annotated:
            raise ValueError(
                f"{handler.__name__}: parameter {parameter.name} needs Annotated[type, description]"
            )
        base, description = typing.get_args(hint)[:2]
        default = REQUIRED if parameter.default is inspect.Parameter.empty else parameter.default
        params.append(Param(parameter.name, ParamType(base), default, description))
    return tuple(params), accepts_extra
