"""GET coercion and type checks of api-v1.md §1.4, with their exact messages."""

from __future__ import annotations

from typing import Any

import pytest

from bamboo.api.params import REQUIRED, ParameterError, ParamType, check_type, coerce_query_value


def coerce_and_check(name: str, value: Any, annotation: Any, default: Any = REQUIRED) -> Any:
    param_type = ParamType(annotation)
    return check_type(name, coerce_query_value(name, value, param_type, default), param_type, default)


@pytest.mark.parametrize(
    ("value", "annotation", "default", "expected"),
    [
        ("abc", str, REQUIRED, "abc"),
        ("3", int, REQUIRED, 3),
        ("3.7", int, REQUIRED, 3),
        ("-2", int, REQUIRED, -2),
        ("true", bool, REQUIRED, True),
        ("TRUE", bool, REQUIRED, True),
        ("1", bool, REQUIRED, True),
        ("yes", bool, REQUIRED, False),
        ("0", bool, REQUIRED, False),
        ("2.5", float, REQUIRED, 2.5),
        ("None", int | None, None, None),
        ("None", str, "x", "None"),
        ("5", int | None, None, 5),
        ("5", list[int], REQUIRED, [5]),
        (["1", "2.9"], list[int], REQUIRED, [1, 2]),
        (["a", "b"], list[str], REQUIRED, ["a", "b"]),
        (["true", "no"], list[bool], REQUIRED, [True, False]),
        ("{'a': 1}", dict, REQUIRED, {"a": 1}),
        ("[1, 2]", list, REQUIRED, [1, 2]),
        ("analysis", str, "analysis", "analysis"),
        ("", str, REQUIRED, ""),
    ],
)
def test_query_coercion(value: Any, annotation: Any, default: Any, expected: Any) -> None:
    assert coerce_and_check("p", value, annotation, default) == expected


@pytest.mark.parametrize(
    ("value", "annotation", "message"),
    [
        ("abc", int, "Type error: 'p' with value 'abc' could not be casted to type int from str."),
        ("x", float, "Type error: 'p' with value 'x' could not be casted to type float from str."),
        (
            ["1", "x"],
            list[int],
            "Type error: 'p' with value '['1', 'x']' could not be casted to type List from list.",
        ),
        ("{'a': ", dict, "Type error: 'p' with value '{'a': ' could not be casted to type dict from str."),
        (
            "{'a': true}",
            dict,
            "Type error: 'p' with value '{'a': true}' could not be casted to type dict from str.",
        ),
        ("[1]", dict, "Type error: 'p' must be of type dict, got list."),
        (["1", "2"], int, "Type error: 'p' must be of type int, got list."),
    ],
)
def test_query_coercion_errors(value: Any, annotation: Any, message: str) -> None:
    with pytest.raises(ParameterError) as caught:
        coerce_and_check("p", value, annotation)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "annotation", "default", "message"),
    [
        ("3", int, REQUIRED, "Type error: 'p' must be of type int, got str."),
        (3, str, REQUIRED, "Type error: 'p' must be of type str, got int."),
        ({"a": 1}, list[int], REQUIRED, "Type error: 'p' must be of type list, got dict."),
        ([1, "2"], list[int], REQUIRED, "Type error: All elements in 'p' must be int."),
        (None, int, REQUIRED, "Type error: 'p' must be of type int, got NoneType."),
        ("x", int | None, None, "Type error: 'p' must be of type int | NoneType, got str."),
    ],
)
def test_json_type_errors(value: Any, annotation: Any, default: Any, message: str) -> None:
    with pytest.raises(ParameterError) as caught:
        check_type("p", value, ParamType(annotation), default)
    assert str(caught.value) == message


def test_json_values_keep_their_types_and_bool_passes_int() -> None:
    assert check_type("p", True, ParamType(int), REQUIRED) is True
    assert check_type("p", None, ParamType(int), None) is None
    assert check_type("p", [1, 2], ParamType(list[int]), REQUIRED) == [1, 2]


def test_json_int_is_accepted_as_float() -> None:
    value = check_type("p", 2, ParamType(float), REQUIRED)
    assert value == 2.0 and isinstance(value, float)
    assert check_type("p", [1, 2.5], ParamType(list[float]), REQUIRED) == [1.0, 2.5]
