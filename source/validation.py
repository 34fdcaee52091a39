"""Turning a response body into valid records plus refused ones, for the client.

Guarantee: every record in the body ends up in exactly one of two tables - ``valid`` (exactly
RECORD_SCHEMA, no nulls) or ``invalid`` (QUARANTINE_SCHEMA: the fields as text and a ``reason``) - and a
malformed record never raises. A body that cannot be decoded at all (truncated, garbled) raises
:class:`UndecodableBodyError` (transient: worth asking again); one that decodes to something other than
records raises :class:`UnexpectedBodyError` (permanent).

JSON bodies go through :func:`validate_json`: one in the service's canonical form is read column-wise
(:mod:`source.json_decode`), any other through ``orjson`` and :func:`validate_rows`, with the same result.

Checks, vectorized: missing or null fields, values of the wrong type or unparseable timestamps, a
negative ``event_id``, an empty ``user_id``, an unknown department or building, ``badge_out`` before
``badge_in``; and everything the lake cannot store (the bounds live in :mod:`utils.records`): a text
field (``user_id``, ``dept``, ``building_location``) longer than 256 characters (``TEXT_MAX_CHARS``), a
timestamp outside 1970-01-01T00:00:00 .. 2200-01-01T00:00:00 (UTC, end excluded; ``TIMESTAMP_MIN``,
``TIMESTAMP_MAX``), a session longer than 2**31 - 1 seconds (``duration_s`` is an int32:
``DURATION_MAX_SECONDS``). Each refusal's reason names the field. So a valid record always fits
LAKE_SCHEMA: :func:`utils.records.with_duration` cannot fail on it. Extra fields are ignored.
Dictionary-encoded strings and other timestamp units or zones are accepted and normalized (timestamps
to naive UTC microseconds); an Arrow timestamp that microseconds cannot hold is refused as invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

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


class UndecodableBodyError(TransientSourceError):
    """The body is truncated or garbled (worth retrying)."""


class UnexpectedBodyError(PermanentSourceError):
    """The body decodes, but not to a list of records (retrying will not help)."""


@dataclass(frozen=True)
class Validated:
    """The records of one body, split: ``valid`` (RECORD_SCHEMA) and ``invalid`` (QUARANTINE_SCHEMA)."""

    valid: pa.Table
    invalid: pa.Table


@dataclass(frozen=True)
class _Column:
    """One field across all records: typed values (null where missing or bad) and where it was bad."""

    values: pa.Array
    bad: BOOLS  # present but of the wrong type or unparseable
    originals: Callable[[npt.NDArray[np.intp]], list[Any]]  # the values as received, for the quarantine


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
    body, including every malformed one, takes the general way and raises the same errors.
    """
    columns = canonical_columns(body)
    if columns is None:
        return validate_rows(decode_json(body))
    return validate_table(pa.Table.from_pydict(columns))


def validate_table(table: pa.Table) -> Validated:
    """Split a decoded Arrow table into valid and refused records."""
    n = table.num_rows
    columns: dict[str, _Column] = {}
    for name in FIELDS:
        if name in table.column_names:
            columns[name] = _arrow_column(table.column(name).combine_chunks(), _KIND[name])
        else:
            columns[name] = _missing_column(name, n)
    return _validate(columns, n, not_objects=None)


def validate_rows(rows: Sequence[Any]) -> Validated:
    """Split decoded JSON records (dicts) into valid and refused records; non-objects are refused too."""
    n = len(rows)
    objects = [row if isinstance(row, dict) else None for row in rows]
    not_objects = np.fromiter((row is None for row in objects), dtype=bool, count=n)
    columns = {
        name: _python_column([None if r is None else r.get(name) for r in objects], _KIND[name]) for name in FIELDS
    }
    return _validate(columns, n, not_objects=not_objects if not_objects.any() else None)


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


def _validate(columns: dict[str, _Column], n: int, not_objects: BOOLS | None) -> Validated:
    problems: list[tuple[BOOLS, str]] = []
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

    refused = np.zeros(n, dtype=bool)
    for mask, _ in problems:
        refused |= mask
    if not refused.any():
        valid = pa.Table.from_arrays([columns[name].values for name in FIELDS], schema=RECORD_SCHEMA)
        return Validated(valid, QUARANTINE_SCHEMA.empty_table())
    keep = pa.array(~refused)
    valid = pa.Table.from_arrays([columns[name].values.filter(keep) for name in FIELDS], schema=RECORD_SCHEMA)
    return Validated(valid, _quarantine(columns, np.flatnonzero(refused), problems))


def _unknown(values: pa.Array, allowed: pa.Array) -> BOOLS:
    """Present values outside ``allowed`` (a null is reported as missing, not as unknown)."""
    return _mask(pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=allowed))))


def _mask(result: pa.Array | pa.ChunkedArray) -> BOOLS:
    """A boolean kernel result as a numpy mask, null counting as False."""
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def _quarantine(columns: dict[str, _Column], idx: npt.NDArray[np.intp], problems: list[tuple[BOOLS, str]]) -> pa.Table:
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
