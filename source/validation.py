"""Turning a response body into valid records plus refused ones, for the client.

Guarantee: every record in the body ends up in exactly one of two tables - ``valid`` (RECORD_SCHEMA's
columns, no nulls in them, followed by the body's extra fields) or ``invalid`` (QUARANTINE_SCHEMA: the
contract's fields as text and a ``reason``) - and a malformed record never raises. A body that cannot be
decoded at all (truncated, garbled) raises :class:`UndecodableBodyError` (transient: worth asking
again); one that decodes to something other than records raises :class:`UnexpectedBodyError` (permanent).

JSON bodies go through :func:`validate_json`: one in the service's canonical form is read column-wise
(:mod:`source.json_decode`), any other through ``orjson`` and :func:`validate_rows`, with the same result.

Checks, vectorized: missing or null fields, values of the wrong type or unparseable timestamps, a
negative ``event_id``, an empty ``user_id``, an unknown department or building, ``badge_out`` before
``badge_in``; and everything the lake cannot store (the bounds live in :mod:`utils.records`): a text
field (``user_id``, ``dept``, ``building_location``) longer than 256 characters (``TEXT_MAX_CHARS``), a
timestamp outside 1970-01-01T00:00:00 .. 2200-01-01T00:00:00 (UTC, end excluded; ``TIMESTAMP_MIN``,
``TIMESTAMP_MAX``), a session longer than 2**31 - 1 seconds (``duration_s`` is an int32:
``DURATION_MAX_SECONDS``). Each refusal's reason names the field. So a valid record always fits
LAKE_SCHEMA: :func:`utils.records.with_duration` cannot fail on it.
Dictionary-encoded strings and other timestamp units or zones are accepted and normalized (timestamps
to naive UTC microseconds); an Arrow timestamp that microseconds cannot hold is refused as invalid.

Extra fields are kept. A field the contract does not name (record version 2's ``door_id``, or whatever
a newer service adds) becomes a nullable column of ``valid`` after RECORD_SCHEMA's, in the order the body
first names them; a body without any gives exactly RECORD_SCHEMA, as before. Refused records keep only
the contract's fields (QUARANTINE_SCHEMA). The rules, each refusal per record with a reason naming the field:

* Names. A field named like a lake column in any letter case (LAKE_SCHEMA: ``duration_s``, which the lake
  derives, or ``EVENT_ID``), or like an earlier extra field in another case (Delta column names are
  case-insensitive: delta-rs refuses such a schema), is not kept and refuses every record that carries
  it, even as null; so does a name that is empty or holds one of `` ,;{}()`` newline, tab or ``=`` (not
  a Delta column name without column mapping: Spark refuses them). An Arrow column is carried by every record.
* Arrow bodies: each extra column as sent, except that dictionary-encoded ones are decoded, a column of
  type null becomes string, and timestamps become naive UTC microseconds like the contract's (a value
  microseconds cannot hold refuses its record). Nested types (struct, list, map) stay as they are.
* JSON bodies (the general path: the canonical fast path reads the version-1 shape only) infer each extra
  column's type from its non-null values: booleans bool, integers int64, numbers float64 (integers among
  them widened: JSON does not tell ``1`` from ``1.0``, JavaScript writes 1.0 as ``1``), strings string,
  objects and arrays string holding the value's compact JSON text (kept, not refused). A column whose
  values are of more than one of those kinds (boolean, number, string, object/array) takes the kind most
  of its records have (on a tie, the one that comes first in the body); a record whose value is of
  another kind is refused ("mixed types in F: a string where most records have int64"). An integer
  outside int64 in an int64 column refuses its record. A column without a non-null value is string.

An extra column's type belongs to one body: the next body may give the same field another (int64 in one,
float64 or all-null string in the next); whoever stores extra columns reconciles them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import chain
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from source.json_decode import canonical_columns
from utils.errors import PermanentSourceError, TransientSourceError
from utils.records import (
    BUILDINGS,
    DEPARTMENTS,
    DURATION_MAX_SECONDS,
    FIELDS,
    LAKE_SCHEMA,
    QUARANTINE_SCHEMA,
    RECORD_SCHEMA,
    TEXT_MAX_CHARS,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
)

BOOLS = npt.NDArray[np.bool_]

_KIND: Final[dict[str, str]] = {
    "event_id": "int",
    "user_id": "str",
    "dept": "str",
    "building_location": "str",
    "badge_in_timestamp": "time",
    "badge_out_timestamp": "time",
    "access_granted": "bool",
}
_DEPARTMENTS: Final = pa.array(DEPARTMENTS, pa.string())
_BUILDINGS: Final = pa.array(BUILDINGS, pa.string())
_UTC_US: Final = pa.timestamp("us", "UTC")
NOT_AN_OBJECT: Final = "not a JSON object"
_CAST_ERRORS: Final = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError)
_TEXT_FIELDS: Final = tuple(name for name, kind in _KIND.items() if kind == "str")
_TIME_MIN: Final = pa.scalar(TIMESTAMP_MIN, pa.timestamp("us"))
_TIME_MAX: Final = pa.scalar(TIMESTAMP_MAX, pa.timestamp("us"))
_TIME_RANGE: Final = f"{TIMESTAMP_MIN:%Y-%m-%d}..{TIMESTAMP_MAX:%Y-%m-%d}"
_DURATION_MAX_US: Final = (DURATION_MAX_SECONDS + 1) * 1_000_000  # floor(us / 1e6) <= MAX  <=>  us < this
_US_PER: Final[dict[str, int]] = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}
_FIELD_SET: Final = frozenset(FIELDS)
_LAKE_COLUMNS: Final[dict[str, str]] = {name.casefold(): name for name in LAKE_SCHEMA.names}
_NAME_FORBIDDEN: Final = frozenset(" ,;{}()\n\t=")
# The kinds of JSON values an extra field's type is inferred from, and what each is called in a reason.
_BOOL, _NUMBER, _STRING, _NESTED = "bool", "number", "string", "nested"
_KIND_OF_TYPE: Final[dict[type, str]] = {bool: _BOOL, int: _NUMBER, float: _NUMBER, str: _STRING}
_A_VALUE: Final = {_BOOL: "a boolean", _NUMBER: "a number", _STRING: "a string", _NESTED: "an object or array"}


class UndecodableBodyError(TransientSourceError):
    """The body is truncated or garbled (worth retrying)."""


class UnexpectedBodyError(PermanentSourceError):
    """The body decodes, but not to a list of records (retrying will not help)."""


@dataclass(frozen=True)
class Validated:
    """The records of one body, split: ``valid`` and ``invalid`` (QUARANTINE_SCHEMA).

    ``valid`` has RECORD_SCHEMA's columns first, then one nullable column per extra field the body
    carried (none: exactly RECORD_SCHEMA).
    """

    valid: pa.Table
    invalid: pa.Table


@dataclass(frozen=True)
class _Column:
    """One field across all records: typed values (null where missing or bad) and where it was bad."""

    values: pa.Array
    bad: BOOLS  # present but of the wrong type or unparseable
    originals: Callable[[npt.NDArray[np.intp]], list[Any]]  # the values as received, for the quarantine


_Problem = tuple[BOOLS, str]  # the records refused for a reason, and the reason


class _Candidate(NamedTuple):
    """A field beyond the contract's: its name, the records that carry it, and how to build its column."""

    name: Any  # a JSON key or an Arrow column name: text, unless validate_rows was handed other keys
    carried: Callable[[], BOOLS]
    build: Callable[[], tuple[pa.Field, pa.Array, list[_Problem]]]


@dataclass(frozen=True)
class _Extras:
    """The extra fields kept (their fields and columns, in body order) and the records they refuse."""

    fields: list[pa.Field]
    columns: list[pa.Array]
    problems: list[_Problem]


def decode_arrow(body: bytes | bytearray) -> pa.Table:
    """An Arrow IPC stream body as a table; raises UndecodableBodyError if it is not a whole stream."""
    try:
        return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as exc:
        raise UndecodableBodyError(f"Arrow body of {len(body)} bytes does not decode: {exc}") from exc


def decode_json(body: bytes | bytearray) -> list[Any]:
    """A JSON body as a list; raises UndecodableBodyError if it does not parse, UnexpectedBodyError if not a list."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UndecodableBodyError(f"JSON body of {len(body)} bytes does not parse: {exc}") from exc
    if not isinstance(data, list):
        raise UnexpectedBodyError(f"JSON body is a {type(data).__name__}, not an array of records")
    return data


def validate_json(body: bytes | bytearray) -> Validated:
    """Decode a JSON body and split its records; the same result as ``validate_rows(decode_json(body))``.

    A body in the service's canonical form is read column-wise without a Python object per record
    (:func:`source.json_decode.canonical_columns`: ~2.4x less time, mostly outside the GIL); any other
    body, including every malformed one and every one with extra fields (record version 2: the
    canonical form is version 1's), takes the general way and raises the same errors.
    """
    columns = canonical_columns(body)
    if columns is None:
        return validate_rows(decode_json(body))
    return validate_table(pa.Table.from_pydict(columns))


def validate_table(table: pa.Table) -> Validated:
    """Split a decoded Arrow table into valid and refused records; extra columns are kept (module docstring)."""
    n = table.num_rows
    first: dict[str, int] = {}
    for i, name in enumerate(table.column_names):
        first.setdefault(name, i)
    columns: dict[str, _Column] = {}
    for name in FIELDS:
        if name in first:
            columns[name] = _arrow_column(table.column(first[name]).combine_chunks(), _KIND[name])
        else:
            columns[name] = _missing_column(name, n)

    def everyone() -> BOOLS:
        return np.ones(n, dtype=bool)

    candidates = (
        _Candidate(name, everyone, partial(_arrow_extra, name, table.column(i)))
        for i, name in enumerate(table.column_names)
        if name not in _FIELD_SET or i != first[name]  # a second column of a contract name is an extra one
    )
    return _validate(columns, n, not_objects=None, extras=_extras(candidates))


def validate_rows(rows: Sequence[Any]) -> Validated:
    """Split decoded JSON records (dicts) into valid and refused records; non-objects are refused too.

    Keys beyond the contract's are kept as extra columns, typed from their values (module docstring).
    """
    n = len(rows)
    objects = [row if isinstance(row, dict) else None for row in rows]
    not_objects = np.fromiter((row is None for row in objects), dtype=bool, count=n)
    columns = {
        name: _python_column([None if r is None else r.get(name) for r in objects], _KIND[name]) for name in FIELDS
    }
    # Every key of every record, in the order the body first names them (the iteration runs in C).
    keys = dict.fromkeys(chain.from_iterable(r for r in objects if r))
    candidates = (
        _Candidate(key, partial(_carried, objects, key), partial(_json_extra, key, objects))
        for key in keys
        if key not in _FIELD_SET
    )
    return _validate(columns, n, not_objects=not_objects if not_objects.any() else None, extras=_extras(candidates))


def _missing_column(name: str, n: int) -> _Column:
    return _Column(pa.nulls(n, RECORD_SCHEMA.field(name).type), np.zeros(n, dtype=bool), lambda idx: [None] * len(idx))


def _python_column(values: list[Any], kind: str) -> _Column:
    """Typed values from Python objects: a fast path for the expected types, per value otherwise."""
    n = len(values)

    def originals(idx: npt.NDArray[np.intp]) -> list[Any]:
        return [values[i] for i in idx]

    try:
        if kind == "int":
            arr = pa.array(values)  # inferred: int64 only if every value is an int (or None)
            if not (pa.types.is_integer(arr.type) or pa.types.is_null(arr.type)):
                raise TypeError(arr.type)
            arr = arr.cast(pa.int64())
        elif kind == "str":
            arr = pa.array(values, pa.string())
        elif kind == "bool":
            arr = pa.array(values, pa.bool_())
        else:
            arr = _parse_times(pa.array(values, pa.string()))
        return _Column(arr, np.zeros(n, dtype=bool), originals)
    except _CAST_ERRORS:
        typed = [_coerce(v, kind) for v in values]
        bad = np.fromiter((v is not None and t is None for v, t in zip(values, typed, strict=True)), bool, count=n)
        target = RECORD_SCHEMA.field(_field_of_kind(kind)).type
        return _Column(pa.array(typed, target), bad, originals)


def _parse_times(text: pa.Array) -> pa.Array:
    """ISO-8601 text as naive UTC microseconds, all at once; raises one of _CAST_ERRORS if any value fails."""
    return text.cast(_UTC_US).cast(pa.timestamp("us"))


def _field_of_kind(kind: str) -> str:
    return next(name for name, k in _KIND.items() if k == kind)


def _coerce(value: Any, kind: str) -> Any:
    """One value in its target Python type, or None if it has the wrong type or does not parse."""
    if kind == "int":
        return value if type(value) is int and -(2**63) <= value < 2**63 else None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment.replace(tzinfo=None) if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _arrow_column(arr: pa.Array, kind: str) -> _Column:
    """Typed values from an Arrow column of any type: cast when the type fits, per value otherwise."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    source = arr

    def originals(idx: npt.NDArray[np.intp]) -> list[Any]:
        taken = source.take(pa.array(idx, pa.int64()))
        try:
            return taken.to_pylist()  # type: ignore[no-any-return]
        except (ValueError, OverflowError):  # e.g. a timestamp beyond Python's datetime: Arrow's own text
            return taken.cast(pa.string()).to_pylist()  # type: ignore[no-any-return]

    t = arr.type
    if kind == "time" and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        # Text timestamps (a JSON body read column-wise): the vectorized parse _python_column tries first,
        # without a Python string per value; when it fails, _python_column goes value by value.
        try:
            return _Column(_parse_times(arr), np.zeros(n, dtype=bool), originals)
        except _CAST_ERRORS:
            pass
    fits = (
        (kind == "int" and pa.types.is_integer(t))
        or (kind == "str" and (pa.types.is_string(t) or pa.types.is_large_string(t)))
        or (kind == "bool" and pa.types.is_boolean(t))
        or (kind == "time" and pa.types.is_timestamp(t))
    )
    try:
        if fits and kind == "time":
            if t.tz is not None:
                arr = arr.cast(pa.timestamp(t.unit, "UTC")).cast(pa.timestamp(t.unit))
            return _timestamps_us(arr, originals)
        if fits:
            return _Column(arr.cast(RECORD_SCHEMA.field(_field_of_kind(kind)).type), np.zeros(n, dtype=bool), originals)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        values = arr.to_pylist()
    except (ValueError, OverflowError):  # values Python cannot hold (a timestamp beyond year 9999): none fits
        target = RECORD_SCHEMA.field(_field_of_kind(kind)).type
        return _Column(pa.nulls(n, target), _mask(arr.is_valid()), originals)
    column = _python_column(values, kind)
    return _Column(column.values, column.bad, originals)


def _timestamps_us(arr: pa.Array, originals: Callable[[npt.NDArray[np.intp]], list[Any]]) -> _Column:
    """A naive timestamp column of any unit in microseconds; values microseconds cannot hold are bad (null).

    Finer units are truncated (ns to us); coarser ones are range-checked first, since Arrow's unsafe
    cast would wrap an overflowing value silently into a plausible one.
    """
    per = _US_PER[arr.type.unit]
    bad = np.zeros(len(arr), dtype=bool)
    if per > 1:
        limit = (2**63 - 1) // per
        ints = arr.cast(pa.int64())
        bad = _mask(pc.or_(pc.less(ints, -limit), pc.greater(ints, limit)))
        if bad.any():
            arr = pc.if_else(pa.array(bad), pa.scalar(None, arr.type), arr)
    return _Column(arr.cast(pa.timestamp("us"), safe=False), bad, originals)


def _too_long(values: pa.Array) -> BOOLS:
    """Texts longer than TEXT_MAX_CHARS characters; characters are counted only where the bytes could exceed it."""
    if pa.types.is_dictionary(values.type):
        per_entry = _too_long(values.dictionary)
        indices = np.asarray(values.indices.fill_null(0), dtype=np.intp)
        return np.asarray(per_entry[indices], dtype=bool) & _mask(values.is_valid())
    if not pc.any(pc.greater(pc.binary_length(values), TEXT_MAX_CHARS)).as_py():
        return np.zeros(len(values), dtype=bool)  # no text has more bytes than the bound: none has more characters
    return _mask(pc.greater(pc.utf8_length(values), TEXT_MAX_CHARS))


def _validate(columns: dict[str, _Column], n: int, not_objects: BOOLS | None, extras: _Extras) -> Validated:
    problems: list[_Problem] = []
    if not_objects is not None:
        problems.append((not_objects, NOT_AN_OBJECT))
        skip = not_objects
    else:
        skip = np.zeros(n, dtype=bool)
    for name, column in columns.items():
        null = _mask(column.values.is_null())
        problems.append((null & ~column.bad & ~skip, f"missing {name}"))
        problems.append((column.bad, f"invalid {name}"))
    event_id = columns["event_id"].values
    problems.append((_mask(pc.less(event_id, 0)), "negative event_id"))
    problems.append((_mask(pc.equal(pc.binary_length(columns["user_id"].values), 0)), "empty user_id"))
    problems.append((_unknown(columns["dept"].values, _DEPARTMENTS), "unknown dept"))
    problems.append((_unknown(columns["building_location"].values, _BUILDINGS), "unknown building_location"))
    for name in _TEXT_FIELDS:
        problems.append((_too_long(columns[name].values), f"{name} longer than {TEXT_MAX_CHARS} characters"))
    badge_in, badge_out = columns["badge_in_timestamp"].values, columns["badge_out_timestamp"].values
    in_range = {}
    for name, values in (("badge_in_timestamp", badge_in), ("badge_out_timestamp", badge_out)):
        outside = _mask(pc.or_(pc.less(values, _TIME_MIN), pc.greater_equal(values, _TIME_MAX)))
        problems.append((outside, f"{name} outside {_TIME_RANGE}"))
        in_range[name] = ~outside
    problems.append((_mask(pc.less(badge_out, badge_in)), "badge_out_timestamp before badge_in_timestamp"))
    # Both in range, so the difference cannot overflow int64 (it could wrap for arbitrary values).
    elapsed = pc.subtract(badge_out.cast(pa.int64()), badge_in.cast(pa.int64()))
    too_long = _mask(pc.greater_equal(elapsed, _DURATION_MAX_US)) & in_range["badge_in_timestamp"]
    problems.append(
        (
            too_long & in_range["badge_out_timestamp"],
            f"badge_out_timestamp - badge_in_timestamp over {DURATION_MAX_SECONDS} s (duration_s is int32)",
        )
    )

    problems.extend(extras.problems)

    refused = np.zeros(n, dtype=bool)
    for mask, _ in problems:
        refused |= mask
    schema = pa.schema([*RECORD_SCHEMA, *extras.fields]) if extras.fields else RECORD_SCHEMA
    arrays = [columns[name].values for name in FIELDS] + extras.columns
    if not refused.any():
        return Validated(pa.Table.from_arrays(arrays, schema=schema), QUARANTINE_SCHEMA.empty_table())
    keep = pa.array(~refused)
    valid = pa.Table.from_arrays([array.filter(keep) for array in arrays], schema=schema)
    return Validated(valid, _quarantine(columns, np.flatnonzero(refused), problems))


def _unknown(values: pa.Array, allowed: pa.Array) -> BOOLS:
    """Present values outside ``allowed`` (a null is reported as missing, not as unknown)."""
    return _mask(pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=allowed))))


def _mask(result: pa.Array | pa.ChunkedArray) -> BOOLS:
    """A boolean kernel result as a numpy mask, null counting as False."""
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def _quarantine(columns: dict[str, _Column], idx: npt.NDArray[np.intp], problems: list[_Problem]) -> pa.Table:
    reasons = ["; ".join(reason for mask, reason in problems if mask[i]) for i in idx]
    ids = columns["event_id"].values.take(pa.array(idx, pa.int64()))
    data: dict[str, pa.Array] = {"event_id": ids}
    for name in FIELDS[1:]:
        data[name] = pa.array([_as_text(v) for v in columns[name].originals(idx)], pa.string())
    data["reason"] = pa.array(reasons, pa.string())
    return pa.Table.from_pydict(data, schema=QUARANTINE_SCHEMA)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        moment = value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
        return moment.isoformat(timespec="microseconds") + "Z"
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# --- extra fields (the rules are in the module docstring) ---------------------------------------------


def _extras(candidates: Iterable[_Candidate]) -> _Extras:
    """The extra fields kept and the records refused for them, in body order."""
    extras = _Extras([], [], [])
    taken: dict[str, str] = {}  # casefolded name -> the extra field that holds it
    for candidate in candidates:
        refusal = _name_refusal(candidate.name, taken)
        if refusal is not None:
            extras.problems.append((candidate.carried(), refusal))
            continue
        taken[candidate.name.casefold()] = candidate.name
        field, column, problems = candidate.build()
        extras.fields.append(field)
        extras.columns.append(column)
        extras.problems.extend(problems)
    return extras


def _name_refusal(name: Any, taken: dict[str, str]) -> str | None:
    """Why a field of this name cannot be a column of the lake, or None if it can."""
    if not isinstance(name, str) or not name or not _NAME_FORBIDDEN.isdisjoint(name):
        return f"field name {name!r} is not a column name (empty, or with a space or one of ,;{{}}()=, newline, tab)"
    folded = name.casefold()
    lake = _LAKE_COLUMNS.get(folded)
    if lake is not None:
        return f"field {name!r} collides with the lake column {lake!r}"
    other = taken.get(folded)
    if other is not None:
        return f"field {name!r} collides with field {other!r} (column names are case-insensitive)"
    return None


def _arrow_extra(name: str, column: pa.ChunkedArray) -> tuple[pa.Field, pa.Array, list[_Problem]]:
    """An extra Arrow column as sent, dictionary-decoded, null type as string, timestamps as naive UTC us."""
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)  # chunk by chunk: chunks may have different dictionaries
    elif pa.types.is_null(t):
        column = column.cast(pa.string())
    values = column.combine_chunks()
    problems: list[_Problem] = []
    if pa.types.is_timestamp(values.type):
        if values.type.tz is not None:
            values = values.cast(pa.timestamp(values.type.unit, "UTC")).cast(pa.timestamp(values.type.unit))
        normalized = _timestamps_us(values, lambda idx: [])
        values = normalized.values
        problems.append((normalized.bad, f"{name} outside what timestamp[us] holds"))
    return pa.field(name, values.type), values, problems


def _carried(objects: list[dict[Any, Any] | None], key: Any) -> BOOLS:
    """Which records have ``key`` (with any value, null too)."""
    return np.fromiter((r is not None and key in r for r in objects), dtype=bool, count=len(objects))


def _json_extra(name: str, objects: list[dict[str, Any] | None]) -> tuple[pa.Field, pa.Array, list[_Problem]]:
    """An extra JSON field's column, typed from its non-null values; records of a minority kind refused."""
    values = [None if r is None else r.get(name) for r in objects]
    types = set(map(type, values))
    types.discard(type(None))
    fast = _one_kind(values, types)
    if fast is not None:
        return pa.field(name, fast.type), fast, []
    kinds = [None if v is None else _KIND_OF_TYPE.get(type(v), _NESTED) for v in values]
    counts: dict[str, int] = {}
    for kind in kinds:
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1  # insertion order: the order kinds first come
    majority = max(counts, key=lambda kind: counts[kind])  # the first of the most frequent
    problems: list[_Problem] = []
    typed: list[Any]
    if majority == _NUMBER:
        floats = any(type(v) is float for v in values)
        typed, out_of_range = [], np.zeros(len(values), dtype=bool)
        for i, (v, kind) in enumerate(zip(values, kinds, strict=True)):
            number = _number(v, floats) if kind == _NUMBER else None
            out_of_range[i] = kind == _NUMBER and number is None
            typed.append(number)
        target: pa.DataType = pa.float64() if floats else pa.int64()
        problems.append((out_of_range, f"{name} outside {target}"))
        column_type = "float64" if floats else "int64"
    else:
        target = pa.bool_() if majority == _BOOL else pa.string()
        keep = [kind == majority for kind in kinds]
        typed = [
            _nested_text(v) if k and majority == _NESTED else v if k else None
            for v, k in zip(values, keep, strict=True)
        ]
        column_type = {_BOOL: "bool", _STRING: "string", _NESTED: "JSON text (objects and arrays)"}[majority]
    for kind in counts:
        if kind != majority:
            mask = np.fromiter((k == kind for k in kinds), dtype=bool, count=len(kinds))
            problems.append((mask, f"mixed types in {name}: {_A_VALUE[kind]} where most records have {column_type}"))
    return pa.field(name, target), pa.array(typed, target), problems


def _one_kind(values: list[Any], types: set[type]) -> pa.Array | None:
    """The column at once when every non-null value is of one kind (numbers: int and float); else None."""
    try:
        if not types:
            return pa.nulls(len(values), pa.string())
        if types == {bool}:
            return pa.array(values, pa.bool_())
        if types == {str}:
            return pa.array(values, pa.string())
        if types == {int}:
            return pa.array(values, pa.int64())
        if types <= {int, float}:
            return pa.array(values, pa.float64())
        if types <= {dict, list}:
            return pa.array([None if v is None else _nested_text(v) for v in values], pa.string())
    except _CAST_ERRORS:  # an integer outside int64 (or float64): value by value
        pass
    return None


def _number(value: Any, floats: bool) -> int | float | None:
    """A JSON number as the column holds it (float64 if any value is fractional, else int64); None if it cannot."""
    if floats:
        try:
            return float(value)
        except OverflowError:
            return None
    return value if -(2**63) <= value < 2**63 else None


def _nested_text(value: Any) -> str:
    """An object or array (or anything else that is not a JSON scalar) as compact JSON text."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
