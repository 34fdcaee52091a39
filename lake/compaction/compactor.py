"""The Compactor: one lake's compaction, composed of planning, reading, sizing, writing, commit and recovery.

Every public method leaves the live-set invariant true when it returns, raises or is killed, and is
idempotent: running it again continues where a crash left off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Final

import pyarrow as pa

from lake import layout, quarantine
from lake.compaction import commit, planning, recovery
from lake.compaction.metrics import CompactionMetrics, CycleReport
from lake.compaction.planning import CompactionPlan
from lake.compaction.reading import CorruptInputError, NeedsSortError, Prefetcher, checked_batches, read_batches
from lake.compaction.sizing import SizeModel, calibrate, ends_before, input_density, inputs_to_keep, sources_chars
from lake.compaction.steps import STEP_SNAPSHOT, STEP_WRITING, CompactionStoppedError, StepHook
from lake.compaction.writing import KIND, Output
from lake.liveset import DataFile, LiveSet, live_set
from lake.parquet import badge_metadata
from lake.storage import LocalStorage
from utils.config import Settings

log = logging.getLogger(__name__)

# Compactions one cycle may run back to back (each one empties landing/ of what it snapshotted).
MAX_COMPACTIONS_PER_CYCLE: Final = 100
QUARANTINED_BY: Final = "compactor"  # the ``by`` of the reason files it writes
SIDECAR_TEMP_NAME: Final = f"{KIND}-sidecar"  # starts with KIND: recovery removes a leftover


class Compactor:
    """Compacts one lake. Not thread-safe: one worker calls it (the lake's compactor lock ensures one process).

    Every public method leaves the live-set invariant true when it returns, raises or is killed, and is
    idempotent: running it again continues where a crash left off.
    """

    def __init__(
        self,
        storage: LocalStorage,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        hook: StepHook | None = None,
        clock: Callable[[], float] = time.time,
        foreign_min_age_seconds: float = quarantine.FOREIGN_MIN_AGE_SECONDS,
        bytes_per_row: float | None = None,
    ) -> None:
        self.storage = storage
        self.min_files = settings.compaction_min_files
        self.min_bytes = settings.compaction_target_min_bytes
        self.max_bytes = settings.compaction_target_max_bytes
        self.grace_seconds = settings.compaction_grace_seconds
        self.stop_event = stop or threading.Event()
        self._hook = hook
        self._clock = clock
        self.foreign_min_age_seconds = foreign_min_age_seconds
        # The output density: given (tests), else measured on a sample before the first output, then
        # learnt from every output written.
        self._model: SizeModel | None = SizeModel(bytes_per_row) if bytes_per_row is not None else None
        self._sort_keys: set[str] = set()

    # -- small helpers ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask a running compaction to end at the next step boundary (safe from any thread)."""
        self.stop_event.set()

    def _step(self, step: str, detail: str = "") -> None:
        if self._hook is not None:
            self._hook(step, detail)

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise CompactionStoppedError("stop requested")

    def _size_model(self, f: DataFile) -> SizeModel:
        if self._model is not None:
            return self._model
        return input_density(f)

    # -- step 1: the snapshot --------------------------------------------------------------------------
    def is_due(self, live: LiveSet | None = None) -> bool:
        """True when the live set holds at least COMPACTION_MIN_FILES landing files."""
        live = live if live is not None else live_set(self.storage)
        return planning.is_due(live, self.min_files)

    def plan(self, live: LiveSet) -> CompactionPlan:
        """The snapshot of ``live`` (see :func:`lake.compaction.planning.plan`); overlapping files are logged."""
        snapshot = planning.plan(live, self.min_bytes)
        if snapshot.overlapping:
            log.error(
                "live files with overlapping event ranges are left alone (the lake holds duplicates; "
                "see `python -m lake verify`): %s",
                ", ".join(snapshot.overlapping),
            )
        return snapshot

    # -- steps 2 and 3: stream, publish --------------------------------------------------------------------
    def compact(self) -> CompactionMetrics | None:
        """Compact the current snapshot if due; None if not due.

        Outputs are published one by one (each a commit); an interruption or a corrupt input ends the
        compaction early with what was published so far (a corrupt input is quarantined).
        """
        started = time.perf_counter()
        live = live_set(self.storage)
        if not self.is_due(live):
            return None
        snapshot = self.plan(live)
        metrics = CompactionMetrics(snapshot_files=len(snapshot.inputs))
        self._step(STEP_SNAPSHOT, "")
        try:
            for run in snapshot.runs:
                self._check_stop()
                self._write_run(list(run), metrics)
        except CorruptInputError as exc:
            log.error("compaction input is corrupt: %s", exc)
            metrics.quarantined.append(self.quarantine(exc.key, exc.reason))
        except CompactionStoppedError:
            metrics.interrupted = True
        metrics.seconds = time.perf_counter() - started
        if metrics.files_in or metrics.quarantined or metrics.interrupted:
            log.info("%s", metrics.summary())
        elif not snapshot.inputs:
            log.warning("%d landing files are due but none can be compacted", len(live.in_zone(layout.LANDING)))
        return metrics

    def _write_run(self, run: list[DataFile], metrics: CompactionMetrics) -> None:
        start, forced_end = 0, None
        while start < len(run):
            retry = self._stream(run, start, forced_end, metrics)
            if retry is None:
                return
            start, forced_end = retry

    def _stream(
        self, run: list[DataFile], start: int, forced_end: int | None, metrics: CompactionMetrics
    ) -> tuple[int, int | None] | None:
        """Write ``run[start:]`` into outputs, publishing each; returns where to start again, or None.

        A retry is asked for when an output ended above the ceiling (it is discarded; the retry forces
        an earlier boundary) or an input turned out unsorted (it will be sorted on reading).
        """
        if self._model is None:
            self._model = calibrate(self._read, run[start:])
        prefetch = Prefetcher(self._read, run[start:], self.stop_event)
        out: Output | None = None
        try:
            for i in range(start, len(run)):
                f = run[i]
                if out is not None and ends_before(
                    out, run, i, forced_end, max_bytes=self.max_bytes, model=self._size_model(run[i])
                ):
                    retry = self._finish(out, metrics)
                    out = None
                    if retry is not None:
                        return retry
                    forced_end = None
                if out is None:
                    self._check_stop()
                    hint = layout.new_file_name(KIND, f.event_id_min, run[-1].event_id_max)
                    out = Output(self.storage, i, hint, self._size_model(f))
                self._copy(prefetch.batches(i - start), f, out)
                if len(out.inputs) == 1:
                    self._step(STEP_WRITING, out.tmp.name)
            if out is not None:
                retry = self._finish(out, metrics)
                out = None
                return retry
            return None
        except NeedsSortError as exc:
            self._sort_keys.add(exc.key)
            log.warning("%s: rows are not in event-id order; reading it whole and sorting it", exc.key)
            assert out is not None
            first = out.first
            out.discard()
            out = None
            return first, None
        except Exception:
            if out is not None:
                out.discard()
                out = None
            raise
        finally:
            prefetch.close()
            if out is not None:  # a BaseException (a simulated crash, KeyboardInterrupt): leave it as a crash would
                out.abandon()

    def _read(self, f: DataFile) -> Generator[pa.RecordBatch, None, None]:
        return read_batches(self.storage.path(f.key), f.key, sort=f.key in self._sort_keys)

    def _copy(self, batches: Iterator[pa.RecordBatch], f: DataFile, out: Output) -> None:
        """Append one input to ``out``, checking its rows against its metadata on the way."""
        checked = checked_batches(batches, f, sorted_on_read=f.key in self._sort_keys, check_stop=self._check_stop)
        for batch, ids in checked:
            out.add(batch, ids)
        out.inputs.append(f)

    def _finish(self, out: Output, metrics: CompactionMetrics) -> tuple[int, int | None] | None:
        """Close ``out``; publish it, or discard it and ask for a retry if it ended above the ceiling."""
        sources = [f.key for f in out.inputs]
        if out.lo is None or out.hi is None:
            lo, hi = 0, -1
        else:
            lo, hi = out.lo, out.hi
        # what the model in force when the output started said it would weigh
        predicted = int(out.model_at_start.size(out.rows, sources_chars(sources)))
        size = out.close(badge_metadata(lo, hi, out.rows, sources))
        if self._model is None:
            self._model = self._size_model(out.inputs[0])
        self._model.learn(out.rows, size, sources_chars(sources))
        if size > self.max_bytes and len(out.inputs) > 1:
            n = len(out.inputs)
            keep = inputs_to_keep(n, size, self.max_bytes)
            log.info(
                "output of %d inputs ended at %d bytes, above the %d-byte ceiling: writing it again with %d inputs",
                n,
                size,
                self.max_bytes,
                keep,
            )
            metrics.rewrites += 1
            out.discard()
            return out.first, out.first + keep
        if size > self.max_bytes:
            log.warning("%s alone is larger than the ceiling (%d bytes); compacted on its own", sources[0], size)
        info = commit.publish_output(self.storage, out, lo, hi, self._step)
        metrics.add_output(out.inputs, out.rows, info, predicted)
        log.debug("published %s: %d inputs, %d rows, %d bytes", info.key, len(sources), out.rows, info.size)
        return None

    # -- step 4: deletion after grace ----------------------------------------------------------------------
    def delete_due(self) -> list[str]:
        """Delete replaced files whose grace period has passed, leaves first; returns the deleted keys.

        See :func:`lake.compaction.commit.delete_due`; ends early when a stop is asked for.
        """
        return commit.delete_due(
            self.storage, grace_seconds=self.grace_seconds, clock=self._clock, stop=self.stop_event, step=self._step
        )

    # -- step 5: recovery ---------------------------------------------------------------------------------
    def recover(self) -> dict[str, list[str]]:
        """Remove this role's temp leftovers, then delete what is due. Call at start, holding the lock."""
        return recovery.recover(self.storage, self.delete_due)

    # -- foreign and corrupt files ------------------------------------------------------------------------
    def quarantine_foreign(self, live: LiveSet | None = None) -> list[str]:
        """Move foreign or corrupt files out of landing/ and compacted/ into quarantine/; returns new keys.

        Each is checked again without any cache first, and left alone while younger than
        ``foreign_min_age_seconds`` (see :func:`lake.quarantine.quarantine_foreign`).
        """
        return quarantine.quarantine_foreign(
            self.storage,
            clock=self._clock,
            by=QUARANTINED_BY,
            temp_name=SIDECAR_TEMP_NAME,
            min_age_seconds=self.foreign_min_age_seconds,
            live=live,
        )

    def quarantine(self, key: str, reason: str) -> str:
        """Move ``key`` into quarantine/ with ``<name>.reason.json`` beside it; returns the new key."""
        return quarantine.quarantine_file(self.storage, key, reason, by=QUARANTINED_BY, temp_name=SIDECAR_TEMP_NAME)

    # -- one cycle -----------------------------------------------------------------------------------------
    def run_cycle(self) -> CycleReport:
        """Quarantine foreign files, compact while due, delete what is due. Stops early when asked."""
        report = CycleReport()
        report.quarantined = self.quarantine_foreign()
        for _ in range(MAX_COMPACTIONS_PER_CYCLE):
            if self.stop_event.is_set():
                break
            metrics = self.compact()
            if metrics is None:
                break
            report.compactions.append(metrics)
            report.quarantined.extend(metrics.quarantined)
            if metrics.interrupted or (metrics.files_in == 0 and not metrics.quarantined):
                break
        if not self.stop_event.is_set():
            report.deleted = self.delete_due()
        return report
