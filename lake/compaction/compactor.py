"""The Compactor: one lake's compaction, composed of planning, reading, sizing, writing, the commit and clean-up.

Every public method leaves the table whole (each event exactly once in every snapshot) when it returns,
raises or is killed, and is idempotent: running it again continues where a crash left off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from typing import Any, Final

import pyarrow as pa

from lake import layout, retention
from lake.cleanup import GraceCleanup
from lake.compaction import commit, planning, recovery
from lake.compaction.aggregating import BACKFILL_PER_CYCLE, AggregateSync, OutputAggregator
from lake.compaction.metrics import CompactionMetrics, CycleReport
from lake.compaction.planning import CompactionPlan
from lake.compaction.reading import (
    InputOpener,
    NeedsSortError,
    Prefetcher,
    UnreadableInputError,
    checked_batches,
    open_native,
    read_batches,
)
from lake.compaction.schema import WRITE_SCHEMA, write_schema
from lake.compaction.sizing import SizeModel, calibrate, ends_before, input_density, inputs_to_keep, sources_chars
from lake.compaction.steps import STEP_SNAPSHOT, STEP_WRITING, CompactionStoppedError, StepHook
from lake.compaction.writing import KIND, Output
from lake.parquet import badge_metadata
from lake.snapshot import DataFile, Snapshot
from lake.storage import LocalStorage, Storage
from lake.table import LakeTable, QuarantineTable, ensure_migrated
from utils.config import Settings
from utils.errors import LakeError, LeaseLostError, StaleInputsError

log = logging.getLogger(__name__)

# Compactions one cycle may run back to back (each one empties landing/ of what it snapshotted).
MAX_COMPACTIONS_PER_CYCLE: Final = 100


class Compactor:
    """Compacts one lake. Not thread-safe: one worker calls it (the lake's compactor lock ensures one process).

    Every public method leaves the table whole when it returns, raises or is killed, and is idempotent:
    running it again continues where a crash left off. While the lake has no table it does nothing.
    """

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        hook: StepHook | None = None,
        clock: Callable[[], float] = time.time,
        bytes_per_row: float | None = None,
        open_input: InputOpener = open_native,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.storage = storage
        self.min_files = settings.compaction_min_files
        self.min_bytes = settings.compaction_target_min_bytes
        self.max_bytes = settings.compaction_target_max_bytes
        self.grace_seconds = settings.compaction_grace_seconds
        self.retention_days = settings.retention_days
        self._quarantine_expired_through: int | None = None  # the retention mark quarantine was cleared to
        self._clock = clock
        self.stop_event = stop or threading.Event()
        self._hook = hook
        self._open_input = open_input  # on a local lake (tests hand in a failing file layer)
        # Right before each commit: on object storage, the check that this compactor still holds its lease.
        self._before_commit = before_commit
        self.cleanup = GraceCleanup(storage, self.grace_seconds, clock=clock, hook=self._step)
        self.aggregates = AggregateSync(storage, before_commit=before_commit)  # the persisted pre-aggregates
        self.persist_aggregates = settings.compaction_aggregates  # off: none computed (stale ones still removed)
        self._table: LakeTable | None = None
        # Inputs that could not be read in this cycle: left out of its later plans, tried again next cycle.
        self._unreadable: set[str] = set()
        # The output density: given (tests), else measured on a sample before the first output, then
        # learnt from every output written.
        self._model: SizeModel | None = SizeModel(bytes_per_row) if bytes_per_row is not None else None
        self._sort_keys: set[str] = set()
        self._schema = WRITE_SCHEMA  # what outputs hold: the lake's columns and the table's extra fields

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
    def table(self) -> LakeTable | None:
        """The lake's table, opened on first use; None while the lake has none (the pipeline creates it).

        Raises UnmigratedLakeError for a lake in the previous layout.
        """
        if self._table is None:
            if not ensure_migrated(self.storage):
                return None
            self._table = LakeTable.open(self.storage)
        return self._table

    def snapshot(self) -> Snapshot | None:
        """The table's newest snapshot; None while the lake has no table."""
        table = self.table()
        if table is None:
            return None
        try:
            return table.snapshot()
        except LakeError:
            self._table = None  # open it afresh next time
            raise

    def is_due(self, snapshot: Snapshot | None = None) -> bool:
        """True when the table holds at least COMPACTION_MIN_FILES landing files (readable in this cycle)."""
        snapshot = snapshot if snapshot is not None else self.snapshot()
        return snapshot is not None and planning.is_due(snapshot, self.min_files, self._unreadable)

    def plan(self, snapshot: Snapshot) -> CompactionPlan:
        """The plan for ``snapshot`` (see :func:`lake.compaction.planning.plan`); overlapping files are logged."""
        plan = planning.plan(snapshot, self.min_bytes, self._unreadable)
        if plan.overlapping:
            log.error(
                "files of the table with overlapping event ranges are left alone (the table holds duplicates; "
                "see `python -m lake verify`): %s",
                ", ".join(plan.overlapping),
            )
        return plan

    # -- steps 2 to 4: stream, publish, commit ------------------------------------------------------------
    def compact(self) -> CompactionMetrics | None:
        """Compact the table's current snapshot if due, in one commit; None if not due (or no table yet).

        Outputs are published into compacted/ one by one, then one commit removes their inputs and adds
        them. A stop, or an input that cannot be read, ends the writing early: the outputs finished so
        far are committed with exactly their inputs (an unreadable input stays in the table, reported,
        and is tried again next cycle). If an input left the table meanwhile nothing is committed and
        the outputs are deleted.
        """
        started = time.perf_counter()
        snapshot = self.snapshot()
        if snapshot is None or not self.is_due(snapshot):
            return None
        plan = self.plan(snapshot)
        assert self._table is not None
        self._schema = write_schema(self._table.extra_fields())  # the table's columns at this snapshot
        metrics = CompactionMetrics(snapshot_files=len(plan.inputs))
        self._step(STEP_SNAPSHOT, f"version {snapshot.version}")
        finished: list[commit.Finished] = []
        try:
            for run in plan.runs:
                self._check_stop()
                self._write_run(list(run), finished, metrics)
        except UnreadableInputError as exc:
            log.error(
                "%s cannot be read (%s); it stays in the table and is tried again next cycle "
                "(`python -m lake verify` says whether it is damaged)",
                exc.key,
                exc.reason,
            )
            metrics.unreadable.append(exc.key)
            self._unreadable.add(exc.key)
        except CompactionStoppedError:
            metrics.interrupted = True
        except Exception:
            commit.discard_outputs(self.storage, finished)  # never committed: nobody can be reading them
            raise
        if finished:
            try:
                self._commit(finished, metrics)
            finally:
                if metrics.version is None:  # not committed: their aggregates files go too
                    self.aggregates.forget([f.info.key for f in finished])
        if metrics.version is not None:  # the outputs' aggregates, before a reader computes them itself
            self.sync_aggregates()
        metrics.seconds = time.perf_counter() - started
        if metrics.files_in or metrics.unreadable or metrics.interrupted:
            log.info("%s", metrics.summary())
        elif not plan.inputs:
            log.warning("%d landing files are due but none can be compacted", len(snapshot.in_zone(layout.LANDING)))
        return metrics

    def _commit(self, finished: list[commit.Finished], metrics: CompactionMetrics) -> None:
        """The compaction's one commit; counts the outputs once it has landed."""
        table = self._table
        assert table is not None
        began = time.perf_counter()
        try:
            if self._before_commit is not None:
                self._before_commit()  # LakeError (lease lost or unverifiable): not committed, outputs inert
            metrics.version = commit.commit_outputs(table, finished, self._step)
        except StaleInputsError as exc:
            metrics.stale = True
            log.warning("compaction not committed: %s; its %d output(s) are deleted", exc, len(finished))
            commit.discard_outputs(self.storage, finished)
            return
        except (OSError, ValueError) as exc:  # the outputs' footers: nothing was committed
            commit.discard_outputs(self.storage, finished)
            raise LakeError(f"compaction not committed: reading its outputs' statistics failed: {exc}") from exc
        except LakeError as exc:
            try:
                after_all = commit.landed(table, finished)
            except LakeError:
                after_all = False
            if not after_all:
                log.error(
                    "compaction commit failed (%s): nothing of it is in the table; its outputs are deleted "
                    "by the clean-up after grace, and it is tried again next cycle",
                    exc,
                )
                raise
            metrics.version = table.version
        metrics.commit_seconds = time.perf_counter() - began
        for f in finished:
            metrics.add_output(f.inputs, f.rows, f.info, f.predicted)

    def _write_run(self, run: list[DataFile], finished: list[commit.Finished], metrics: CompactionMetrics) -> None:
        start, forced_end = 0, None
        while start < len(run):
            retry = self._stream(run, start, forced_end, finished, metrics)
            if retry is None:
                return
            start, forced_end = retry

    def _stream(
        self,
        run: list[DataFile],
        start: int,
        forced_end: int | None,
        finished: list[commit.Finished],
        metrics: CompactionMetrics,
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
                    retry = self._finish(out, finished, metrics)
                    out = None
                    if retry is not None:
                        return retry
                    forced_end = None
                if out is None:
                    self._check_stop()
                    hint = layout.new_file_name(KIND, max(0, f.event_id_min), max(0, run[-1].event_id_max))
                    out = Output(
                        self.storage,
                        i,
                        hint,
                        self._size_model(f),
                        self._schema,
                        tap=self.aggregates.aggregator(self._schema.names) if self.persist_aggregates else None,
                    )
                self._copy(prefetch.batches(i - start), f, out)
                if len(out.inputs) == 1:
                    self._step(STEP_WRITING, out.tmp.name)
            if out is not None:
                retry = self._finish(out, finished, metrics)
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
        return read_batches(f.key, self._opener(f.key), sort=f.key in self._sort_keys, schema=self._schema)

    def _opener(self, key: str) -> Callable[[], Any]:
        """How to open input ``key``: natively by its path on a local lake (or by the test's file layer)."""
        storage = self.storage
        if isinstance(storage, LocalStorage):
            path, open_input = storage.path(key), self._open_input
            return lambda: open_input(path)
        return lambda: storage.open_input(key)

    def _copy(self, batches: Iterator[pa.RecordBatch], f: DataFile, out: Output) -> None:
        """Append one input to ``out``, checking its rows against its statistics on the way."""
        checked = checked_batches(batches, f, sorted_on_read=f.key in self._sort_keys, check_stop=self._check_stop)
        for batch, ids in checked:
            out.add(batch, ids)
        out.inputs.append(f)

    def _finish(
        self, out: Output, finished: list[commit.Finished], metrics: CompactionMetrics
    ) -> tuple[int, int | None] | None:
        """Close ``out``; publish it, or discard it and ask for a retry if it ended above the ceiling."""
        sources = [f.key for f in out.inputs]
        if out.lo is None or out.hi is None:
            lo, hi = 0, -1
        else:
            lo, hi = out.lo, out.hi
        # what the model in force when the output started said it would weigh
        predicted = int(out.model_at_start.size(out.rows, sources_chars(sources)))
        # badge.sources stays in the footer for humans; nothing reads it (the commit says what is replaced)
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
        persisted = None
        if isinstance(out.tap, OutputAggregator):
            persisted = self.aggregates.store(out.tap, out.tmp, out.rows)  # computed as its rows were written
        info = commit.publish_output(self.storage, out, lo, hi, self._step)
        self.aggregates.remember(info.key, persisted)
        finished.append(commit.Finished(info, tuple(out.inputs), out.rows, predicted))
        log.debug("published %s: %d inputs, %d rows, %d bytes", info.key, len(sources), out.rows, info.size)
        return None

    # -- retention ---------------------------------------------------------------------------------------
    def expire(self) -> retention.Expiry | None:
        """Remove the dates before the retention horizon from both tables (:mod:`lake.retention`); None if
        retention is off (``RETENTION_DAYS=0``), the lake has no table, or nothing is due."""
        table = self.table()
        first_kept = retention.horizon(self.retention_days, datetime.fromtimestamp(self._clock(), UTC).date())
        if table is None or first_kept is None:
            return None
        expiry = retention.expire(
            table,
            lambda: QuarantineTable.open(self.storage),
            first_kept,
            before_commit=self._before_commit,  # LakeError (lease lost or unverifiable): nothing expires
            quarantine_done_through=self._quarantine_expired_through,
        )
        if expiry is not None:
            self._quarantine_expired_through = expiry.expired_through
        return expiry if expiry is not None and (expiry.files or expiry.quarantine_files) else None

    # -- step 5: the clean-up after grace -----------------------------------------------------------------
    def clean_up(self) -> list[str]:
        """Delete the files out of their table for the grace period (see :mod:`lake.cleanup`); ends early on stop."""
        return self.cleanup.run(self.stop_event)

    # -- recovery -----------------------------------------------------------------------------------------
    def recover(self) -> dict[str, list[str]]:
        """Remove this role's temp leftovers, then clean up what is due. Call at start, holding the lock."""
        return recovery.recover(self.storage, self.clean_up)

    # -- one cycle -----------------------------------------------------------------------------------------
    def run_cycle(self) -> CycleReport:
        """Expire what retention says, compact while due, bring the aggregates table up to date, then clean up
        what is due. Stops early when asked.

        Inputs that cannot be read are left out of the cycle's later compactions (the others go on)
        and tried again in the next cycle.
        """
        report = CycleReport()
        self._unreadable.clear()
        try:
            report.expiry = self.expire()  # first: no compaction spends time on dates about to leave
        except LeaseLostError:
            raise
        except LakeError as exc:  # the compaction and the clean-up go on; retention is tried next cycle
            log.error("retention failed (%s); tried again next cycle", exc)
        for _ in range(MAX_COMPACTIONS_PER_CYCLE):
            if self.stop_event.is_set():
                break
            metrics = self.compact()
            if metrics is None:
                break
            report.compactions.append(metrics)
            report.unreadable.extend(metrics.unreadable)
            if metrics.interrupted or metrics.stale or (metrics.files_in == 0 and not metrics.unreadable):
                break
        if not self.stop_event.is_set():
            self.sync_aggregates()  # missing ones (a few), and those of files retention removed
        if not self.stop_event.is_set():
            report.deleted = self.clean_up()
        return report

    # -- the persisted pre-aggregates ------------------------------------------------------------------------
    def sync_aggregates(self) -> tuple[int, int]:
        """Commit the aggregates of the compacted files that lack them, remove those of files that left the
        table (see :mod:`lake.compaction.aggregating`); returns (added, removed). Failures are logged."""
        try:
            snapshot = self.snapshot()
        except LakeError as exc:
            log.warning("aggregates not updated: %s", exc)
            return 0, 0
        if snapshot is None:
            return 0, 0
        return self.aggregates.sync(snapshot, backfill=BACKFILL_PER_CYCLE if self.persist_aggregates else 0)
