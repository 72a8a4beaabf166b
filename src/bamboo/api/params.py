"""PanDA's parameter coercion and type checks (api-v1.md §1.4), as pure functions.

GET query values arrive as strings (or lists of strings for repeated keys) and are cast to the
declared type; JSON bodies keep their JSON types and are only checked. The error texts are part
of the contract: clients and upstream tests compare them literally.
"""

from __future__ import annotations

import ast
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

_NO_DEFAULT: Any = object()
REQUIRED = _NO_DEFAULT

# Integers must fit the database's BIGINT: a larger one cannot name anything and would fail the query.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
#: Largest textual (query or form) value; bigger fields are refused by name.
MAX_TEXT_VALUE_BYTES = 1024 * 1024


class ParameterError(Exception):
    """A parameter failed coercion or its type check; the message is the client-facing text."""


@dataclass(frozen=True, slots=True)
class ParamType:
    """A declared parameter type: a plain type, a ``list[T]``, or ``T | None``."""

    annotation: Any

    @property
    def origin(self) -> Any:
        return typing.get_origin(self.annotation)

    @property
    def is_list(self) -> bool:
        return self.annotation is list or self.origin is list

    @property
    def element(self) -> type | None:
        if self.origin is list:
            (arg,) = typing.get_args(self.annotation)
            return arg
        return None

    @property
    def is_union(self) -> bool:
        return self.origin in (types.UnionType, typing.Union)

    @property
    def members(self) -> tuple[type, ...]:
        if self.is_union:
            return typing.get_args(self.annotation)
        return (self.origin or self.annotation,)

    @property
    def name(self) -> str:
        """The name PanDA's messages print: ``int``, ``list``, ``List`` and so on."""
        if self.annotation is Any:
            return "Any"
        if self.origin is list:
            return "List"
        if self.is_union:
            return " | ".join(_type_name(member) for member in self.members)
        return _type_name(self.annotation)


def _type_name(tp: Any) -> str:
    return "NoneType" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _to_bool(value: str) -> bool:
    return value.lower() in ("true", "1")


def _to_int(value: Any) -> int:
    number = float(value)
    # int(float("inf")) raises OverflowError; the range check says what is wrong instead.
    if not math.isfinite(number) or not INT_MIN <= number <= INT_MAX:
        raise ValueError(f"{value!r} is not a 64-bit integer")
    return int(number)


_ELEMENT_CASTS: dict[type, Any] = {int: _to_int, float: float, bool: _to_bool}


def coerce_query_value(name: str, value: Any, param_type: ParamType, default: Any) -> Any:
    """Cast one GET value to its declared type the way PanDA's decorator does."""
    if default is not _NO_DEFAULT and _equals(value, default):
        return value
    if value == "None" and default is None:
        return None
    annotation = param_type.annotation
    if annotation is Any:
        return value
    try:
        if annotation is str:
            return value
        if annotation is bool:
            return _to_bool(value) if isinstance(value, str) else value
        if annotation is int:
            return _to_int(value) if isinstance(value, str) else value
        if annotation is float:
            return float(value) if isinstance(value, str) else value
        if param_type.origin is list:
            items = [value] if isinstance(value, str) else value
            cast = _ELEMENT_CASTS.get(param_type.element)  # type: ignore[arg-type]
            return [cast(item) if cast and isinstance(item, str) else item for item in items]
        if isinstance(value, str) and not _is_instance(value, param_type):
            literal = ast.literal_eval(value)
            _require_json_value(literal)
            return literal
        return value
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError) as exc:
        raise ParameterError(
            f"Type error: '{name}' with value '{value}' could not be casted to type {param_type.name} "
            f"from {type(value).__name__}."
        ) from exc


def _require_json_value(value: Any) -> None:
    """Refuse Python literals JSON cannot hold (sets, bytes, complex, non-string keys, inf).

    Handlers store and answer parameters as JSON, so such a value would fail only later, as a 500.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                raise TypeError("dictionary keys must be strings")
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("non-finite number")
        elif not (item is None or isinstance(item, str | int)):
            raise TypeError(f"{type(item).__name__} is not a JSON value")


def check_text(name: str, value: Any, *, textual: bool) -> None:
    """Refuse a parameter holding NUL characters anywhere, or a textual value over the size limit.

    PostgreSQL cannot store NUL in text, and no PanDA value contains one; checking here once names
    the field instead of failing as a database error in some handler. Only ``textual`` (query or
    form) values have the per-field size limit: a JSON body is bounded as a whole.
    """
    if textual and isinstance(value, str) and len(value) > MAX_TEXT_VALUE_BYTES // 4:
        if len(value.encode("utf-8", "surrogatepass")) > MAX_TEXT_VALUE_BYTES:
            raise ParameterError(f"Value error: '{name}' is larger than {MAX_TEXT_VALUE_BYTES} bytes.")
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ParameterError(f"Value error: '{name}' must not contain NUL characters.")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _equals(value: Any, default: Any) -> bool:
    try:
        return bool(value == default)
    except Exception:  # an exotic __eq__ never decides a type check
        return False


def _is_instance(value: Any, param_type: ParamType) -> bool:
    return any(isinstance(value, member) for member in param_type.members)


def check_type(name: str, value: Any, param_type: ParamType, default: Any) -> Any:
    """Check a (possibly coerced) value against its declared type; return the value to use.

    Python's ``bool``-is-an-``int`` quirk is kept (JSON ``true`` passes an int check), as upstream.
    Unlike upstream, a JSON integer is accepted where a float is declared and converted to float:
    rejecting ``1`` for a float parameter helps nobody.
    """
    if (value is None and default is None) or param_type.annotation is Any:
        return value
    if param_type.is_list:
        if not isinstance(value, list):
            raise ParameterError(f"Type error: '{name}' must be of type list, got {type(value).__name__}.")
        element = param_type.element
        if element is not None:
            if element is float:
                value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            # The bool-is-an-int quirk stops at list elements: [false] is no list of ids.
            refused = (element is not bool) and any(isinstance(item, bool) for item in value)
            if refused or not all(isinstance(item, element) for item in value):
                raise ParameterError(f"Type error: All elements in '{name}' must be {_type_name(element)}.")
            if element is int and not all(INT_MIN <= item <= INT_MAX for item in value):
                raise ParameterError(f"Value error: elements of '{name}' must be 64-bit integers.")
        return value
    members = param_type.members
    if float in members and int not in members and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not _is_instance(value, param_type):
        raise ParameterError(
            f"Type error: '{name}' must be of type {param_type.name}, got {type(value).__name__}."
        )
    if int in members and isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise ParameterError(f"Value error: '{name}' must be a 64-bit integer.")
    return value


def bool_as_declared_int(value: Any, param_type: ParamType) -> Any:
    """JSON ``true``/``false`` that passed an int check (the upstream quirk), as the integer 1/0.

    The handler then gets the number it declared: PostgreSQL compares no BIGINT column with a
    boolean, so a ``True`` task id would fail the query instead of naming task 1.
    """
    members = param_type.members
    if isinstance(value, bool) and int in members and bool not in members:
        return int(value)
    return value
