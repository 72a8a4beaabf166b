"""Resolving a task's job-parameter template into one job's parameters (domain.md §4.4, §4.5).

The refiner turns the ``jobParameters`` items of a task into one template string; for every
generated job, :func:`render` fills its placeholders from a :class:`JobContext` (the job's input
and output file names and a few numbers). :func:`output_file_name` makes the file name of one
output or log file from its stream's filename template.

Placeholders in the template:

* ``${NAME}``, where NAME is a stream (``IN``, ``OUTPUT0``, ``LOG0``, ``SEQNUMBER``, any
  secondary stream) or a scalar (``SN``, ``RNDMSEED``, ``MAXEVENTS``, ``SKIPEVENTS``,
  ``FIRSTEVENT``, ``SURL``, ``ATTEMPTNR``). ``${A,B}`` concatenates streams, ``${IN[0:2]}``
  takes a Python slice of the file list.
* Decorators after a ``/``, which may be combined (``${IN/L/A}``):
  ``/L`` comma-joined list; ``/S`` space-joined list; ``/A`` list with each item in single
  quotes (comma-joined unless ``/S``); ``/T`` Python list literal; ``/F`` ``tmpin_<dataset>``,
  the name of the file the payload finds the list in; ``/E`` URL-unquoted comma-joined list;
  ``/P`` each value as a 6-digit zero-padded integer; ``/M[expr]`` arithmetic on a single
  value, ``#`` standing for it. Without a list decorator one file gives its name and several
  files give the compact ``head[n1,n2]tail`` form when the names differ only in digits.
* ``${SN:fmt}``: the serial number through a Python format spec.
* ``${TRN_OUTPUT:OUTPUT}`` (merge jobs): for every stream ``OUTPUT<n>`` of the job, the files of
  its unmerged twin stream ``TRN_OUTPUT<n>`` and the merged file, as ``in1,in2:out``, the streams
  separated by spaces; a stream without unmerged files is left out. ``${TRN_LOG:LOG}`` likewise,
  and ``${TRN_LOG_MERGE:LOG_MERGE}`` merges the ``TRN_LOG0`` files into ``LOG_MERGE``.
* ``$JEDITASKID``, ``$JOBSETID`` (6 digits), ``$PANDAID`` (5 digits), which the upstream
  server fills at insertion; here they are filled after the ``${...}`` pass, so they are also
  replaced inside the file names that pass inserted.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from bamboo.logic.errors import InvalidInput

#: Longest template :func:`render` accepts, in UTF-8 bytes.
MAX_TEMPLATE_BYTES = 64 * 1024

#: Longest ``/M[...]`` expression.
MAX_EXPRESSION_CHARS = 256

# Integers in /M arithmetic stay below this many bits, so 9**9**9 is refused, not computed.
_MAX_INT_BITS = 1024

_PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_BODY = re.compile(
    rf"(?P<names>{_NAME}(?:,{_NAME})*)"
    r"(?:\[(?P<start>-?[0-9]{1,9})?:(?P<stop>-?[0-9]{1,9})?\])?"
    r"(?P<decorators>(?:/(?:[LSATFEP]|M\[[^\]]*\]))*)"
)
_DECORATOR = re.compile(r"/M\[([^\]]*)\]|/([LSATFEP])")
_SN_FORMAT = re.compile(r"SN:(.*)", re.DOTALL)
_MERGE_PAIRS = re.compile(rf"TRN_{_NAME}:(?P<merged>{_NAME})")
_STREAM_NUMBER = re.compile(r"[0-9]*")
# The merged log reads the unmerged logs of the first log stream (upstream's convention).
_MERGED_LOG_SOURCES = {"LOG_MERGE": "TRN_LOG0"}


def unmerged_source(stream: str) -> str:
    """The unmerged twin stream a merge job reads to write the merged ``stream``."""
    return _MERGED_LOG_SOURCES.get(stream, f"TRN_{stream}")


_SERIAL_IN_NAME = re.compile(r"\$\{SN(?:/P|:([^{}]*))?\}")
# Integer presentation only, and a width of at most two digits so a spec cannot ask for a
# gigabyte of padding.
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?#?0?[0-9]{0,2}[,_]?[bdnoxX]?", re.DOTALL)
_SERVER_TOKEN = re.compile(r"\$(JEDITASKID|JOBSETID|PANDAID)")
_ATTEMPT_SUFFIX = re.compile(r"\.[0-9]+$")
_DIGITS = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"-?[0-9]{1,300}")
_DECIMAL = re.compile(r"-?(?:[0-9]{1,300}\.?[0-9]{0,300}|\.[0-9]{1,300})(?:[eE][-+]?[0-9]{1,3})?")

# Streams whose leftover placeholder means the job would run without its input; the upstream
# generator refuses those even when they are not in our placeholder syntax.
_INPUT_LIKE_PREFIXES = ("IN", "SEQNUMBER")

_EXPRESSION_VALUE = "_value_"
_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """What one job fills into its task's template.

    ``streams`` maps stream names to file names: input streams (already de-duplicated and
    ordered by the caller), ``OUTPUT<n>`` and ``LOG<n>`` with the job's one new file each, and
    ``SEQNUMBER`` with its sequence numbers. ``stream_datasets`` maps streams to their dataset
    (or container) name for ``/F``. ``serial`` is the job's output serial number for ``${SN}``.
    A scalar left ``None`` keeps its placeholder unchanged.
    """

    streams: Mapping[str, Sequence[str]]
    task_id: int
    serial: int | None = None
    random_seed: int | None = None
    max_events: int | None = None
    skip_events: int | None = None
    first_event: int | None = None
    source_url: str | None = None
    attempt_nr: int = 0
    jobset_id: int | None = None
    panda_id: int | None = None
    stream_datasets: Mapping[str, str] = field(default_factory=dict)


def output_file_name(
    filename_template: str,
    serial: int,
    *,
    task_id: int,
    jobset_id: int | None = None,
    panda_id: int | None = None,
) -> str:
    """Name one output or log file from its stream's filename template (domain.md §4.5).

    ``${SN}`` and ``${SN/P}`` both become the serial number zero-padded to 6 digits: in file
    names upstream pads both (``.log.$JEDITASKID.${SN}.log.tgz`` gives ``.log.10000001.000001.log.tgz``).
    ``${SN:fmt}`` formats it with a Python format spec. ``$JEDITASKID`` becomes the task ID;
    ``$JOBSETID`` (6 digits) and ``$PANDAID`` (5 digits) are replaced only when given. Other
    text, including other placeholders, is kept.

    Args:
        filename_template: the stream's template, e.g. ``mc.gen.EVNT._${SN}.root``.
        serial: the serial number of this file.
        task_id: the jediTaskID.
        jobset_id: the job's jobsetID, if known.
        panda_id: the job's PandaID, if known.

    Returns:
        The file name.

    Raises:
        InvalidInput: a ``${SN:fmt}`` spec is not an integer format.
    """

    def serial_text(match: re.Match[str]) -> str:
        spec = match.group(1)
        return f"{serial:06d}" if spec is None else _format_serial(serial, spec)

    name = _SERIAL_IN_NAME.sub(serial_text, filename_template)
    return _replace_server_tokens(name, task_id, jobset_id, panda_id)


def render(template: str, ctx: JobContext) -> str:
    """Fill a job-parameter template for one job.

    In job parameters ``${SN}`` is the bare serial number and ``${SN/P}`` the 6-digit one, as
    upstream does (file names pad both, see :func:`output_file_name`). Text in ``${...}`` that
    is not placeholder syntax (``${x:-y}`` of a shell) is left for the payload unless it starts
    like an input stream. Replacements are not scanned again, so a file name containing
    ``${...}`` is inserted verbatim.

    Args:
        template: the task's job-parameter template.
        ctx: the job's values.

    Returns:
        The job parameters.

    Raises:
        InvalidInput: the template is too long; a placeholder names a stream the job does not
            have (or an empty one), or starts with ``IN``/``SEQNUMBER`` without being valid; a
            decorator cannot apply to the values (``/P`` on a non-integer, ``/M`` on several
            values or with a bad expression).
    """
    if (
        len(template) > MAX_TEMPLATE_BYTES
        or len(template.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES
    ):
        raise InvalidInput(f"job parameters template is longer than {MAX_TEMPLATE_BYTES} bytes")
    scalars: dict[str, str | None] = {
        "SN": _text(ctx.serial),
        "RNDMSEED": _text(ctx.random_seed),
        "MAXEVENTS": _text(ctx.max_events),
        "SKIPEVENTS": _text(ctx.skip_events),
        "FIRSTEVENT": _text(ctx.first_event),
        "SURL": ctx.source_url,
        "ATTEMPTNR": str(ctx.attempt_nr),
    }

    def resolve(match: re.Match[str]) -> str:
        replacement = _resolve(match.group(1), ctx, scalars)
        return match.group(0) if replacement is None else replacement

    text = _PLACEHOLDER.sub(resolve, template)
    return _replace_server_tokens(text, ctx.task_id, ctx.jobset_id, ctx.panda_id)


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _resolve(body: str, ctx: JobContext, scalars: Mapping[str, str | None]) -> str | None:
    """The replacement for ``${body}``, or None to leave it as it is."""
    serial_format = _SN_FORMAT.fullmatch(body)
    if serial_format is not None:
        return None if ctx.serial is None else _format_serial(ctx.serial, serial_format.group(1))
    merge_pairs = _MERGE_PAIRS.fullmatch(body)
    if merge_pairs is not None:
        return _merge_pairs(merge_pairs["merged"], ctx)
    parsed = _BODY.fullmatch(body)
    if parsed is None:
        if body.startswith(_INPUT_LIKE_PREFIXES):
            raise _unresolved(body)
        return None
    names = parsed["names"].split(",")
    values: list[str] = []
    for name in names:
        if name in scalars:
            scalar = scalars[name]
            if scalar is None:
                return None
            values.append(scalar)
        elif name in ctx.streams:
            values.extend(ctx.streams[name])
        else:
            raise _unresolved(body)
    if parsed["start"] is not None or parsed["stop"] is not None:
        start = None if parsed["start"] is None else int(parsed["start"])
        stop = None if parsed["stop"] is None else int(parsed["stop"])
        values = values[start:stop]
    if not values:
        raise _unresolved(body)
    return _decorate(values, parsed["decorators"], body, _file_list_name(names[0], ctx))


def _merge_pairs(merged: str, ctx: JobContext) -> str:
    """``in1,in2:out`` for each merged stream ``<merged><n>`` of the job that has unmerged files."""
    numbered = [
        (int(suffix) if suffix else -1, name)
        for name in ctx.streams
        if name.startswith(merged) and _STREAM_NUMBER.fullmatch(suffix := name[len(merged) :])
    ]
    pairs = []
    for _, name in sorted(numbered):
        sources = ctx.streams.get(unmerged_source(name))
        if sources and ctx.streams[name]:
            pairs.append(f"{','.join(sources)}:{ctx.streams[name][0]}")
    return " ".join(pairs)


def _decorate(values: list[str], decorators: str, body: str, list_name: str) -> str:
    flags: set[str] = set()
    expressions: list[str] = []
    for expression, letter in _DECORATOR.findall(decorators):
        if letter:
            flags.add(letter)
        else:
            expressions.append(expression)
    if expressions:
        if len(expressions) > 1 or len(values) != 1:
            raise InvalidInput(
                f"placeholder ${{{_shorten(body)}}}: /M needs exactly one value and one expression"
            )
        values = [_evaluate(expressions[0], values[0], body)]
    if "P" in flags:
        values = [_zero_pad(value, body) for value in values]
    if "T" in flags:
        text = str(values)
    elif "F" in flags:
        text = f"tmpin_{list_name}"
    elif flags & {"L", "S", "A"}:
        items = [f"'{value}'" for value in values] if "A" in flags else values
        text = (" " if "S" in flags else ",").join(items)
    elif "E" in flags:
        # /E unquotes the full list, never the compact form.
        text = ",".join(values)
    elif len(values) > 1:
        text = _compact(values)
    else:
        text = values[0]
    return unquote(text) if "E" in flags else text


def _file_list_name(stream: str, ctx: JobContext) -> str:
    # The stream name stands in when the caller gave no dataset.
    dataset = ctx.stream_datasets.get(stream)
    return file_list_name(dataset) if dataset else stream


def file_list_name(dataset: str) -> str:
    """The name ``${STREAM/F}`` gives a dataset's LFN list (after ``tmpin_``): as upstream, the
    dataset without scope and trailing slash. Dispatch ships the lists under it (writeToFile)."""
    return dataset.rstrip("/").rsplit(":", 1)[-1]


def _compact(lfns: Sequence[str]) -> str:
    """``head[n1,n2,...]tail`` when the names differ only in a run of digits, else the comma list."""
    full = ",".join(lfns)
    # The attempt suffix (.1, .2 ...) of a replica is not part of what distinguishes the files.
    names = [_ATTEMPT_SUFFIX.sub("", lfn) for lfn in lfns]
    if len(set(names)) != len(names):
        return full
    head = re.sub(r"[0-9]+$", "", _common_prefix(names))
    suffix = _common_prefix([name[::-1] for name in names])[::-1]
    # The tail may not reach into the head of the shortest name.
    room = min(len(name) for name in names) - len(head)
    tail = re.sub(r"^[0-9]+", "", suffix[max(len(suffix) - room, 0) :])
    middles = [name[len(head) : len(name) - len(tail)] for name in names]
    if not all(_DIGITS.fullmatch(middle) for middle in middles):
        return full
    return f"{head}[{','.join(middles)}]{tail}"


def _common_prefix(texts: Sequence[str]) -> str:
    # The lexicographically first and last texts part where any two of them part.
    first, last = min(texts), max(texts)
    size = 0
    for a, b in zip(first, last, strict=False):
        if a != b:
            break
        size += 1
    return first[:size]


def _zero_pad(value: str, body: str) -> str:
    if not _INTEGER.fullmatch(value):
        raise InvalidInput(f"placeholder ${{{_shorten(body)}}}: /P needs an integer, got {_shorten(value)!r}")
    return f"{int(value):06d}"


def _format_serial(serial: int, spec: str) -> str:
    if _FORMAT_SPEC.fullmatch(spec):
        try:
            return format(serial, spec)
        except ValueError:
            pass
    raise InvalidInput(f"placeholder ${{SN:{_shorten(spec)}}}: not an integer format")


def _replace_server_tokens(text: str, task_id: int, jobset_id: int | None, panda_id: int | None) -> str:
    replacements = {
        "JEDITASKID": str(task_id),
        "JOBSETID": None if jobset_id is None else f"{jobset_id:06d}",
        "PANDAID": None if panda_id is None else f"{panda_id:05d}",
    }
    return _SERVER_TOKEN.sub(lambda match: replacements[match.group(1)] or match.group(0), text)


def _evaluate(expression: str, value: str, body: str) -> str:
    """Evaluate ``/M[expression]`` with ``#`` = value, allowing only arithmetic on numbers."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidInput(
            f"placeholder ${{{_shorten(body)}}}: expression longer than {MAX_EXPRESSION_CHARS}"
        )
    if _INTEGER.fullmatch(value):
        number: float = int(value)
    elif _DECIMAL.fullmatch(value) and math.isfinite(float(value)):
        number = float(value)
    else:
        raise InvalidInput(f"placeholder ${{{_shorten(body)}}}: /M needs a number, got {_shorten(value)!r}")
    try:
        tree = ast.parse(expression.replace("#", f"({_EXPRESSION_VALUE})"), mode="eval")
        result = _evaluate_node(tree.body, number, body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"placeholder ${{{_shorten(body)}}}: cannot evaluate expression ({exc})") from None
    return str(result)


def _evaluate_node(node: ast.expr, number: float, body: str) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value, body)
    if isinstance(node, ast.Name) and node.id == _EXPRESSION_VALUE:
        return number
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _evaluate_node(node.operand, number, body)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _evaluate_node(node.left, number, body)
        right = _evaluate_node(node.right, number, body)
        if (
            isinstance(node.op, ast.Pow)
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * left.bit_length() > _MAX_INT_BITS
        ):
            raise InvalidInput(f"placeholder ${{{_shorten(body)}}}: number too large in expression")
        return _checked(_OPERATORS[type(node.op)](left, right), body)
    raise InvalidInput(
        f"placeholder ${{{_shorten(body)}}}: "
        "expressions may only use numbers, #, + - * / // % ** and parentheses"
    )


def _checked(result: object, body: str) -> float:
    # A negative base to a fractional power gives a complex number; floats may overflow to inf.
    if isinstance(result, int) and not isinstance(result, bool) and result.bit_length() <= _MAX_INT_BITS:
        return result
    if isinstance(result, float) and math.isfinite(result):
        return result
    raise InvalidInput(f"placeholder ${{{_shorten(body)}}}: expression result out of range")


def _unresolved(body: str) -> InvalidInput:
    return InvalidInput(f"unresolved placeholder ${{{_shorten(body)}}} in job parameters")


def _shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
