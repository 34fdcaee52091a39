"""The compaction protocol's steps: their names, the hook called at each, and stopping between two of them.

A stop or a crash at any step leaves the table whole (each event exactly once in every snapshot), so tests
may crash or pause a compactor exactly there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

from lake.cleanup import STEP_DELETED as STEP_DELETED  # noqa: PLC0414 - re-exported: the clean-up's steps
from lake.cleanup import STEP_DELETING as STEP_DELETING  # noqa: PLC0414 - re-exported
from utils.errors import ConfigError, LakeError

# Steps at which a hook is called (tests inject crashes there; ``pause_hook`` pauses a process there).
STEP_SNAPSHOT: Final = "snapshot"  # the table's snapshot is taken, nothing written yet
STEP_WRITING: Final = "writing"  # an output's temp file holds its first input (partly written)
STEP_WRITTEN: Final = "written"  # an output's temp file is complete and fsynced, not yet published
STEP_PUBLISHED: Final = "published"  # an output is in compacted/, not yet committed: no reader sees it
STEP_COMMITTED: Final = "committed"  # the one commit (remove the inputs, add the outputs) has landed
# STEP_DELETING, STEP_DELETED: the clean-up after grace (lake.cleanup) deletes a file out of the table
STEPS: Final = (
    STEP_SNAPSHOT,
    STEP_WRITING,
    STEP_WRITTEN,
    STEP_PUBLISHED,
    STEP_COMMITTED,
    STEP_DELETING,
    STEP_DELETED,
)

StepHook = Callable[[str, str], None]  # (step, key or name it concerns)


class CompactionStoppedError(LakeError):
    """A stop was requested; the compaction ends between two steps (an unfinished temp file is removed)."""


def pause_hook(spec: str, *, seconds: float = 300.0, stream: TextIO | None = None) -> StepHook:
    """A hook that pauses the process at the n-th occurrence of a step (``"written"`` or ``"published:2"``).

    For tests that ``kill -9`` a real compactor at a chosen step; prints ``PAUSED at <step> <detail>``.
    """
    step, _, nth = spec.partition(":")
    if step not in STEPS or (nth and not nth.isdigit()):
        raise ConfigError("BADGE_COMPACTOR_PAUSE_AT", spec, "a step (" + ", ".join(STEPS) + "), optionally ':n'")
    wanted = int(nth or 1)
    seen = 0

    def hook(current: str, detail: str) -> None:
        nonlocal seen
        if current != step:
            return
        seen += 1
        if seen == wanted:
            print(f"PAUSED at {step} {detail}", file=stream or sys.stderr, flush=True)
            time.sleep(seconds)

    return hook
