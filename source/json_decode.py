"""A vectorized reader for JSON bodies in the service's canonical form, with no Python object per record.

Guarantee: :func:`canonical_columns` returns columns only when the body is, byte for byte, the compact
form the service writes - ``[{"event_id":INT,"user_id":"STR","dept":"STR","building_location":"STR",
"badge_in_timestamp":"STR","badge_out_timestamp":"STR","access_granted":true|false},...]`` in exactly that
key order, no whitespace, strings without escapes or control characters, valid UTF-8, integers of at most
18 digits without leading zeros. Such a body has a single meaning, so the columns hold exactly what
``orjson.loads`` gives for it. Anything else (whitespace, another key order, a missing or extra field, a
null, a number where a string belongs, an escape, a truncated or garbled body, an empty array) gives
None, and the caller decodes the body the general way. Values are not judged here (an unknown
department or an unparseable timestamp is still text): that is the validator's job, on either path.
The canonical form is record version 1's: a version-2 body (``door_id`` after ``access_granted``) or any
other body with extra fields takes the general way, which keeps them (source.validation: "Extra fields
are kept").

Why: ``orjson.loads`` builds ~800,000 Python objects per 100,000 records and the columns are then
rebuilt from them, all under the GIL (~220 ms per 100,000 records here, decode plus validation); this
reader plus the same validation takes ~90 ms and holds the GIL for little of it, so the pipeline's
prefetched requests decode side by side (benchmarks/bench_api.py, bench_ingest.py: JSON rows). Every
``"`` is located with numpy (no string in the canonical form may contain one, so there are exactly 24
per record), the field boundaries follow from the quote positions, and one Arrow ``StringArray`` over
the body's own buffer (no copy) has the fixed text between the values ("skeleton") and the values as
alternate elements. The skeleton of the first record is compared with the expected text; each later
skeleton piece is compared with the same piece of the record before (one ``equal`` over the array and
the array shifted by one record), so every byte outside the values is checked; the skeleton holds all
24 quotes of a record, so no value holds one. Integers and booleans are checked exactly, the values are
``take``-n per column, and numpy and Arrow release the GIL for the heavy steps.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from utils.records import FIELDS

QUOTE: Final = ord('"')
QUOTES_PER_RECORD: Final = 24  # 7 keys and 5 string values, each between two quotes
PIECES_PER_RECORD: Final = 14  # 7 values and the 7 skeleton pieces that follow them
HEAD: Final = '[{"event_id":'
# The skeleton after each value of a record, in field order; the last one is followed by the next record.
SKELETON: Final[tuple[str, ...]] = (
    ',"user_id":"',
    '","dept":"',
    '","building_location":"',
    '","badge_in_timestamp":"',
    '","badge_out_timestamp":"',
    '","access_granted":',
    '},{"event_id":',
)
TAIL: Final = "}]"
_LAST_KEY: Final = b'"access_granted":'
_MAX_BODY: Final = 2**31 - 1  # int32 offsets
_STRING_FIELDS: Final = FIELDS[1:6]  # user_id ... badge_out_timestamp, still text here
# Each value's start and end as (quote index within the record, shift): event_id lies between
# ``"event_id":`` (quote 1, +2) and ``,"user_id"`` (quote 2, -1); the five strings between their quotes;
# access_granted between ``"access_granted":`` (quote 23, +2) and ``},{`` (next record's quote 0, -3).
_BOUNDARY_QUOTES: Final = np.array([1, 2, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 23, 24], dtype=np.intp)
_BOUNDARY_SHIFTS: Final = np.array([2, -1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 2, -3], dtype=np.int64)


def canonical_columns(body: bytes | bytearray) -> dict[str, pa.Array] | None:
    """The seven fields of a canonical body as Arrow arrays, or None if the body is not canonical.

    ``event_id`` is int64, ``access_granted`` bool, the other five are strings (timestamps unparsed).
    The arrays are copies: they keep no reference to ``body``.
    """
    size = len(body)
    if size < len(HEAD) + len(TAIL) or size > _MAX_BODY:
        return None
    data = np.frombuffer(body, dtype=np.uint8)
    if data[0] != ord("[") or data[-1] != ord("]") or data[-2] != ord("}"):
        return None  # cheap early outs: not an array of objects, or cut short
    if not _first_record_ends(body):
        return None  # a field after access_granted (record version 2): the general way, at once
    # No escapes and no control characters anywhere: strings are then their literal bytes, and the
    # only whitespace JSON allows (all below 0x20) is excluded too.
    if body.find(b"\\") >= 0 or (data < 0x20).any():
        return None
    if not _is_utf8(body):
        return None
    quotes = np.flatnonzero(data == QUOTE)
    n, rest = divmod(len(quotes), QUOTES_PER_RECORD)
    if rest or n == 0:
        return None
    split = _pieces(quotes, n, body)
    if split is None or not _skeleton_ok(split[0], n):
        return None
    return _values(split[0], split[1], data)


def _first_record_ends(body: bytes | bytearray) -> bool:
    """Whether the first ``"access_granted":`` is followed by ``true}`` or ``false}``, as in the canonical form.

    No canonical string holds a quote, so the first occurrence is the first record's key.
    """
    at = body.find(_LAST_KEY)
    if at < 0:
        return False
    end = at + len(_LAST_KEY)
    return body.startswith(b"true}", end) or body.startswith(b"false}", end)


def _is_utf8(body: bytes | bytearray) -> bool:
    if body.isascii():
        return True
    try:
        body.decode("utf-8")  # strict, like orjson: no surrogates, no overlong forms
    except UnicodeDecodeError:
        return False
    return True


def _pieces(
    quotes: npt.NDArray[np.intp], n: int, body: bytes | bytearray
) -> tuple[pa.StringArray, npt.NDArray[np.int32]] | None:
    """Values and skeleton pieces alternating, as one StringArray over ``body`` (no copy); None if disordered.

    Boundaries per record, from its 24 quote positions ``q``: event_id from after ``"event_id":`` to
    before ``,"user_id"``; each string value between its two quotes; access_granted from after
    ``"access_granted":`` to the ``}`` that closes the record, three bytes before the next record's
    first quote (a sentinel quote one past the end of the body stands for it after the last record).
    """
    size = len(body)
    padded = np.empty(len(quotes) + QUOTES_PER_RECORD, dtype=np.int64)
    padded[: len(quotes)] = quotes
    padded[len(quotes) :] = size + 1
    # Row i: record i's 24 quotes and the next record's first one (overlapping rows, no copy).
    rows = np.lib.stride_tricks.as_strided(padded, shape=(n, QUOTES_PER_RECORD + 1), strides=(8 * QUOTES_PER_RECORD, 8))
    offsets = np.empty(n * PIECES_PER_RECORD + 2, dtype=np.int32)
    offsets[0] = 0
    offsets[-1] = size
    inner = offsets[1:-1].reshape(n, PIECES_PER_RECORD)
    np.add(rows[:, _BOUNDARY_QUOTES], _BOUNDARY_SHIFTS, out=inner, casting="unsafe")
    if not (offsets[1:] >= offsets[:-1]).all():
        return None  # not the canonical layout (and Arrow must never see decreasing offsets)
    pieces = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(body))
    return pieces, offsets


def _skeleton_ok(pieces: pa.StringArray, n: int) -> bool:
    """Whether every skeleton piece (the even elements) is the canonical text."""
    per = PIECES_PER_RECORD
    if pieces[0].as_py() != HEAD:
        return False
    first = pieces.slice(2, per - 1).to_pylist()[::2]  # the skeleton after each value of record 0
    if first != [*SKELETON[:-1], SKELETON[-1] if n > 1 else TAIL]:
        return False
    if n == 1:
        return True
    # Every later skeleton piece equals the same piece of the record before, hence record 0's. The
    # ``},{"event_id":`` of the second-to-last record is reached through the one before it; the last
    # record's closing piece is the body's last two bytes, already known to be the TAIL.
    span = n * per - per - 2
    return _even_all(pc.equal(pieces.slice(2, span), pieces.slice(2 + per, span)))


def _even_all(equal: pa.BooleanArray) -> bool:
    """Whether the elements 0, 2, 4, ... of ``equal`` are all true (the odd ones compare values: ignored)."""
    flags = equal.to_numpy(zero_copy_only=False)
    return bool(flags[::2].all())


def _values(
    pieces: pa.StringArray, offsets: npt.NDArray[np.int32], data: npt.NDArray[np.uint8]
) -> dict[str, pa.Array] | None:
    """The value elements, one column per field; None if an integer or a boolean is not canonical."""
    per = PIECES_PER_RECORD
    n = (len(pieces) - 1) // per

    def column(field: int) -> pa.Array:
        return pieces.take(pa.array(np.arange(1 + 2 * field, n * per, per, dtype=np.int64)))

    starts = offsets[1:-1:per]  # event_id is the first value of each record
    if not _canonical_integers(data, starts, offsets[2::per] - starts):
        return None
    try:
        ids = column(0).cast(pa.int64())  # digits only now: Arrow's parser is exact for those
    except pa.ArrowInvalid:
        return None
    granted = _booleans(column(6))
    if granted is None:
        return None
    out: dict[str, pa.Array] = {"event_id": ids}
    for field, name in enumerate(_STRING_FIELDS, start=1):
        out[name] = column(field)
    out["access_granted"] = granted
    return out


def _byte_at(data: npt.NDArray[np.uint8], positions: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """``data[positions]``, positions past the end clamped to the last byte (never out of bounds)."""
    return data[np.minimum(positions, len(data) - 1)]


def _canonical_integers(
    data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int32], lengths: npt.NDArray[np.int32]
) -> bool:
    """Whether every span starts like a JSON integer of at most 18 digits: ``-?(0|[1-9]...)``.

    The rest of each span is left to Arrow's cast, which refuses anything but digits after such a start
    (its only extensions, ``0x`` hex and leading zeros, begin with a ``0`` that is refused here).
    """
    first = _byte_at(data, starts)
    second = _byte_at(data, starts + 1)
    negative = first == ord("-")
    lead = np.where(negative, second, first)  # the first digit
    digits = lengths - negative
    ok = (digits >= 1) & (digits <= 18) & (lead >= ord("0")) & (lead <= ord("9"))
    ok &= (lead != ord("0")) | (digits == 1)
    ok &= negative | ((first >= ord("0")) & (first <= ord("9")))
    return bool(ok.all())


def _booleans(text: pa.StringArray) -> pa.BooleanArray | None:
    """The spans as booleans if every one is exactly ``true`` or ``false``, else None."""
    true = pc.equal(text, "true")
    if not pc.all(pc.or_(true, pc.equal(text, "false"))).as_py():
        return None
    return true
