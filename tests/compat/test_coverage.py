"""The coverage lists of coverage.py against the installed clients, Bamboo's endpoints and the tests
they name, and README.md against the lists: a client function, a pbook command or a served endpoint
that nobody listed, or a listed test that no longer makes its call, fails here."""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bamboo.api import legacy, v1
from tests.compat import coverage
from tests.compat.coverage import (
    CLIENTS,
    HARVESTER,
    NOT_SERVED,
    PANDA_CLIENT,
    PBOOK_COMMANDS,
    PILOT,
    Call,
)

ROOT = Path(__file__).resolve().parents[2]
E2E_HELPERS = (ROOT / "tests/e2e/conftest.py").read_text()


@pytest.fixture(scope="module")
def client_module() -> Any:
    # Importing pandaclient.Client resolves the cache host unless told it sits behind a load balancer.
    os.environ.setdefault("PANDA_BEHIND_REAL_LB", "1")
    return importlib.import_module("pandaclient.Client")


def public_functions(module: Any) -> dict[str, Any]:
    return {
        name: function
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if function.__module__ == module.__name__
        and not name.startswith("_")
        and not name.endswith("_internal")
    }


def decorated_endpoint(module: Any, name: str) -> str | None:
    """The endpoint panda-client's request decorator gives the function (or its *_internal builder)."""
    for candidate in (name, f"{name}_internal"):
        function = getattr(module, candidate, None)
        if function is not None and function.__closure__:
            endpoint = inspect.getclosurevars(function).nonlocals.get("endpoint")
            if endpoint:
                return endpoint
    return None


def all_calls() -> Iterator[tuple[str, str, Call]]:
    for title, calls in CLIENTS.items():
        for name, call in calls.items():
            yield title, name, call


def test_every_client_function_is_listed_with_its_endpoint(client_module: Any) -> None:
    functions = public_functions(client_module)
    assert sorted(functions) == sorted(PANDA_CLIENT)
    for name in functions:
        endpoint = decorated_endpoint(client_module, name)
        if endpoint is not None:
            assert f"api/v1/{endpoint}" in PANDA_CLIENT[name].urls, name


def test_every_pbook_command_is_listed() -> None:
    os.environ.setdefault("PANDA_BEHIND_REAL_LB", "1")
    pbook = importlib.import_module("pandaclient.PBookScript")
    commands = [info.name or info.callback.__name__ for info in pbook.app.registered_commands]
    assert sorted(commands) == sorted(PBOOK_COMMANDS)


def test_a_served_call_is_covered_and_an_uncovered_one_says_why() -> None:
    served = {endpoint.path.removeprefix("/") for endpoint in v1.load()}
    served |= {f"server/panda/{method}" for method in legacy.METHODS}
    for title, name, call in all_calls():
        server_urls = [url for url in call.urls if url.startswith(("api/v1/", "server/panda/"))]
        if any(url not in served for url in server_urls):
            assert call.note == NOT_SERVED, (title, name)
        elif call.urls:
            assert call.tests, (title, name)
        else:
            assert call.note and not call.tests, (title, name)


def referenced(call: Call) -> Iterator[tuple[Any, Any]]:
    """Each listed test function with its module."""
    for reference in call.tests:
        path, _, function_name = reference.partition("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        yield getattr(module, function_name), module


def test_every_listed_test_exists_and_makes_the_call() -> None:
    # panda-client and pbook run for real: the test (or a Deployment helper it uses) names the call.
    for calls in (PANDA_CLIENT, PBOOK_COMMANDS):
        for name, call in calls.items():
            for function, module in referenced(call):
                # A parametrised test names its calls in its marks.
                source = inspect.getsource(function) + repr(getattr(function, "pytestmark", ""))
                quoted = f'"{name}"'
                named = quoted in source or repr(name) in source or quoted in E2E_HELPERS
                # A legacy call the package cannot complete is tested as the legacy API's own.
                legacy_method = call.urls[0].removeprefix("server/panda/")
                assert named or legacy_method in inspect.getsource(module), (name, function)
    # Harvester's and the pilot's requests are rebuilt: the test's module (or the e2e helpers)
    # sends the path.
    for calls in (HARVESTER, PILOT):
        for name, call in calls.items():
            url = call.urls[0]
            needle = (
                url.removeprefix("server/panda/") if url.startswith("server/panda/") else url.split("<")[0]
            )
            needle = needle.removeprefix("api/v1/")
            for _, module in referenced(call):
                assert needle in inspect.getsource(module) or needle in E2E_HELPERS, (name, module)


def test_readme_is_generated_from_the_lists() -> None:
    assert (Path(coverage.__file__).with_name("README.md")).read_text() == coverage.render()
