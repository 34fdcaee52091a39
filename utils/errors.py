"""The platform's exception tree.

Every error the platform raises on purpose derives from :class:`BadgeError`; foreign
exceptions are translated at the boundary with ``raise ... from exc``::

    BadgeError
    ├── ConfigError              a setting is missing or out of range (exit status 2)
    ├── StreamMismatchError      the source serves another stream than the lake's table holds (exit status 2)
    ├── SourceError              the generator service could not give us records
    │   ├── TransientSourceError     worth retrying later (timeouts, resets, 429, 5xx) - retries exhausted
    │   └── PermanentSourceError     retrying will not help (other 4xx, undecodable schema)
    └── LakeError                something about the Parquet lake
        ├── LakeLockedError          another process holds the pipeline or compactor lock
        ├── CorruptFileError         a data file is unreadable or lacks the badge metadata
        ├── CommitError              publishing a file into the lake failed; nothing partial is left
        ├── FencedError              another writer committed the pipeline's position: this one must stop
        ├── StaleInputsError         a compaction's inputs left the table before its commit
        ├── UnmigratedLakeError      a lake in the previous layout: run `python -m lake migrate` (exit status 2)
        └── LeaseLostError           the compactor's lease on object storage is no longer this process's
"""

from __future__ import annotations

from typing import Final

MESSAGE_CHARS: Final = 400  # an error's text in one line, at most (a store's errors carry pages of debug output)


def one_line(error: BaseException | str, limit: int = MESSAGE_CHARS) -> str:
    """An error's text on one line, at most ``limit`` characters (an object store's debug dump cut off)."""
    text = str(error).split("Debug source:", 1)[0]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BadgeError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigError(BadgeError):
    """A setting is invalid. The message names the variable, its value and what is allowed."""

    def __init__(self, variable: str, value: object, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"{variable}={value!r} is invalid: {allowed}")


class SourceError(BadgeError):
    """The generator service did not give us records."""


class TransientSourceError(SourceError):
    """A retryable failure (timeout, connection reset, 429, 5xx) that outlasted every retry."""


class PermanentSourceError(SourceError):
    """A failure that retrying cannot fix (a 4xx other than 429, a response that breaks the schema)."""


class LakeError(BadgeError):
    """Something about the Parquet lake."""


class LakeLockedError(LakeError):
    """Another process already holds this lake's lock for the same role."""


class CorruptFileError(LakeError):
    """A data file is unreadable Parquet or lacks the ``badge.*`` metadata."""


class CommitError(LakeError):
    """Publishing a file into the lake failed; the temporary file was removed."""


class StreamMismatchError(BadgeError):
    """The source serves a different stream than the one the lake's table was created for; nothing was written."""


class FencedError(LakeError):
    """Another writer committed the pipeline's position since this one last did: this writer is a zombie.

    Never retried: retrying would append records the other writer may also append.
    """


class StaleInputsError(LakeError):
    """Files a compaction read are no longer in the table when it is about to commit; it commits nothing."""


class UnmigratedLakeError(LakeError):
    """The lake holds data files but no Delta log: it is in the previous layout and must be migrated first."""


class LeaseLostError(LakeError):
    """This process no longer holds (or can no longer vouch for) the compactor's lease on object storage.

    Raised by ``lake.lease.Lease`` when the lease object was taken over or removed, when renewals have
    failed for so long that the lease may have expired, or when the lease was never held. The holder
    must not commit: another compactor may be running. It may try to acquire the lease again.
    """
