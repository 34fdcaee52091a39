"""The stream a lake holds: seed, rate, start and schema version, recorded in the table's configuration.

Guarantee: a table records its stream's identity in the commit that creates it, and
:func:`check_stream` refuses (StreamMismatchError, nothing written) a source serving another stream,
so records of two different streams never share event ids in one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from utils.errors import StreamMismatchError

SCHEMA_VERSION: Final = 1  # the record schema the table holds (utils.records.LAKE_SCHEMA)

CONFIG_SEED: Final = "badge.stream.seed"
CONFIG_EVENTS_PER_SECOND: Final = "badge.stream.eventsPerSecond"
CONFIG_STREAM_START: Final = "badge.stream.start"
CONFIG_SCHEMA_VERSION: Final = "badge.schemaVersion"
CONFIG_KEYS: Final[tuple[str, ...]] = (
    CONFIG_SEED,
    CONFIG_EVENTS_PER_SECOND,
    CONFIG_STREAM_START,
    CONFIG_SCHEMA_VERSION,
)


@dataclass(frozen=True)
class StreamIdentity:
    """What makes record ``k`` what it is: the generator's seed, its timeline's rate and start, the schema.

    ``events_per_second`` is the rate of the stream's timeline (the firehose serves the same records
    as its nominal-rate stream, so it reports that rate); ``stream_start`` is ISO-8601 UTC with ``Z``.
    """

    seed: int
    events_per_second: float
    stream_start: str
    schema_version: int = SCHEMA_VERSION

    def to_config(self) -> dict[str, str]:
        """The table configuration entries recording this identity."""
        return {
            CONFIG_SEED: str(self.seed),
            CONFIG_EVENTS_PER_SECOND: repr(float(self.events_per_second)),
            CONFIG_STREAM_START: self.stream_start,
            CONFIG_SCHEMA_VERSION: str(self.schema_version),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, str | None]) -> StreamIdentity | None:
        """The identity a table's configuration records; None if it records none (or a malformed one)."""
        try:
            return cls(
                seed=int(str(config[CONFIG_SEED])),
                events_per_second=float(str(config[CONFIG_EVENTS_PER_SECOND])),
                stream_start=str(config[CONFIG_STREAM_START]),
                schema_version=int(str(config[CONFIG_SCHEMA_VERSION])),
            )
        except (KeyError, ValueError):
            return None

    def __str__(self) -> str:
        rate = f"{self.events_per_second:g}"
        return f"seed {self.seed}, {rate} events/s, starting {self.stream_start}, schema version {self.schema_version}"


def check_stream(table: StreamIdentity | None, source: StreamIdentity, where: str) -> None:
    """Raise StreamMismatchError (one line: both identities and what to do) unless they are the same stream."""
    if table is None or table == source:
        return
    raise StreamMismatchError(
        f"the lake at {where} holds the stream ({table}) but the source serves ({source}); nothing was written. "
        f"Start the service with GENERATOR_SEED={table.seed} GENERATOR_STREAM_START={table.stream_start} "
        f"and the same rate, or point DATA_LAKE_PATH at a new lake"
    )
