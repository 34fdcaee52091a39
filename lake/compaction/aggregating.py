"""Persisting the pre-aggregates of compacted files into the aggregates table (:mod:`lake.aggregates`).

The compactor computes an output's aggregates from its rows as it writes them (:class:`OutputAggregator`: a
thread beside the writing, fed each row group; the file is never read again), stores them in ``temp/`` when
the output is closed (:meth:`AggregateSync.store`), and after the compaction's commit has added the output to
the events table it publishes them under ``aggregates/`` and commits them (:meth:`AggregateSync.sync`), in
one commit of the aggregates table that also removes the aggregates of data files that left the events
table (compacted again, expired). The same step computes, a few per cycle, the aggregates of compacted
files that lack them (a crash between the two commits, a lake compacted before this step existed): the
table converges on "every compacted file has its aggregates". Failures are logged and tried again next
cycle; they never affect the events table, and a reader without an aggregate computes it itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from lake import aggregates, layout
from lake.compaction.writing import KIND
from lake.filestats import FileStats
from lake.snapshot import DataFile, Snapshot
from lake.storage import FileInfo, LocalStorage, Storage
from lake.table import AggregatesTable, Persisted
from utils.errors import LakeError, LeaseLostError

log = logging.getLogger(__name__)

BACKFILL_PER_CYCLE: Final = 8  # compacted files without aggregates computed per cycle (each read once)
QUEUE_DEPTH: Final = 2  # row groups handed to an OutputAggregator and not yet aggregated (then the writer waits)


class OutputAggregator:
    """The aggregates of one compacted output, computed from its row groups as they are written.

    :meth:`feed` hands a row group to a thread of its own that adds it to an :class:`lake.aggregates.Accumulator`,
    so the aggregation overlaps the writing and the file is never read again. Memory: at most ``QUEUE_DEPTH``
    row groups waiting, and the accumulator's partials. :meth:`finish` returns the levels; :meth:`cancel` ends
    the thread and drops them. Not thread-safe: the compactor's worker calls it.
    """

    def __init__(self, columns: Collection[str]) -> None:
        self._accumulator = aggregates.Accumulator(columns)
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._ended = False

    def feed(self, rows: pa.Table) -> None:
        """Aggregate ``rows`` (the next row group of the output); waits while ``QUEUE_DEPTH`` are pending."""
        if self._ended or self._error is not None or rows.num_rows == 0:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="compactor-aggregates", daemon=True)
            self._thread.start()
        self._put(rows.select([n for n in rows.schema.names if n in aggregates.SCANNED_COLUMNS]))

    def _put(self, item: pa.Table | None) -> None:
        """Queue ``item``, waiting for room only while the thread lives (a dead one takes nothing)."""
        assert self._thread is not None
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        if self._error is None:
            self._error = RuntimeError("the aggregation thread ended early")

    def _run(self) -> None:
        while (rows := self._queue.get()) is not None:  # after a failure or a cancel, take the rest unread
            if self._error is None and not self._cancelled:
                try:
                    self._accumulator.add(rows)
                except BaseException as exc:  # handed to the caller of finish(), as an Exception
                    self._error = exc if isinstance(exc, Exception) else RuntimeError(f"aggregation ended: {exc!r}")

    def _end(self) -> None:
        if self._ended:
            return
        if self._thread is not None:
            self._put(None)
            self._thread.join()
        self._ended = True  # only now: an interrupted end is tried again by the next cancel()

    def finish(self) -> dict[str, pa.Table]:
        """Every level of the rows fed (raises what the aggregation raised)."""
        self._end()
        if self._error is not None:
            raise self._error
        return self._accumulator.levels()

    def cancel(self) -> None:
        """Stop aggregating (the output is discarded or abandoned); idempotent."""
        self._cancelled = True
        self._end()


class AggregateSync:
    """The compactor's side of the aggregates table. Not thread-safe: the compactor's worker calls it."""

    def __init__(self, storage: Storage, *, before_commit: Callable[[], None] | None = None) -> None:
        self.storage = storage
        self._before_commit = before_commit
        # output key -> its aggregates file, written in temp/ (not held in memory), awaiting the next sync
        self._fresh: dict[str, Path] = {}
        self._table: AggregatesTable | None = None
        self._failed: set[str] = set()  # data files whose aggregates could not be computed in this process

    def close(self) -> None:
        """Forget the aggregates not yet published (their staged files are removed)."""
        self.forget(list(self._fresh))

    def aggregator(self, columns: Collection[str]) -> OutputAggregator:
        """A new :class:`OutputAggregator` for the next output, of ``columns``."""
        return OutputAggregator(columns)

    def store(self, aggregator: OutputAggregator, tmp: Path, rows: int) -> Path | None:
        """The aggregates of the closed output ``tmp`` of ``rows`` rows, written beside it in ``temp/`` (its name
        starts as the compactor's temp files do: recovery removes it after a crash); None if they could not be
        computed (logged: the sync computes them from the published file instead)."""
        staged = self.storage.new_temp_path(f"{KIND}-{aggregates.ZONE}-{tmp.name}")
        try:
            aggregates.write_persisted(aggregates.to_persisted(aggregator.finish(), rows), str(staged))
        except Exception as exc:  # aggregates are never worth a compaction: whatever failed, it goes on
            staged.unlink(missing_ok=True)
            log.warning("aggregates of %s not computed (%s); computed from the published file later", tmp.name, exc)
            return None
        return staged

    def remember(self, key: str, staged: Path | None) -> None:
        """Keep the aggregates file of the output published as ``key`` for the next :meth:`sync`."""
        if staged is not None:
            self._fresh[key] = staged

    def forget(self, keys: Mapping[str, object] | list[str]) -> None:
        for key in keys:
            staged = self._fresh.pop(key, None)
            if staged is not None:
                staged.unlink(missing_ok=True)

    def _open(self) -> AggregatesTable:
        if self._table is None:
            table = AggregatesTable.open(self.storage, create=True)
            assert table is not None
            self._table = table
        else:
            self._table.refresh()
        return self._table

    def sync(self, snapshot: Snapshot, backfill: int = BACKFILL_PER_CYCLE) -> tuple[int, int]:
        """Bring the aggregates table in line with ``snapshot`` of the events table: add the aggregates of its
        compacted files that lack them (those just written, then up to ``backfill`` more), remove those of
        files no longer in it. One commit; returns (added, removed).

        Raises LeaseLostError if the lease is lost; any other failure is logged and returns (0, 0).
        """
        try:
            return self._sync(snapshot, backfill)
        except LeaseLostError:
            raise
        except Exception as exc:  # never fails the compactor's cycle (out of memory included)
            self._table = None
            log.warning("aggregates table not updated (%s); tried again next cycle", exc)
            return 0, 0

    def _sync(self, snapshot: Snapshot, backfill: int) -> tuple[int, int]:
        compacted = {f.key: f for f in snapshot.in_zone(layout.COMPACTED)}
        self.forget([k for k in self._fresh if k not in compacted])
        if not compacted and not self.storage.has_table(aggregates.ZONE):
            return 0, 0
        if self._before_commit is not None:
            self._before_commit()  # a compactor that lost its lease publishes nothing
        table = self._open()
        chosen = table.persisted()
        current = {k for k, p in chosen.items() if k in compacted and compacted[k].row_count == p.source_rows}
        # of the others: data file gone (compacted again, expired) or other rows, or a second one of a file
        stale = [p for p in table.entries() if p.source not in current or chosen[p.source] != p]
        wanted = [f for key, f in compacted.items() if key not in current]
        # just written first; files whose aggregates failed before last, so they never hold up the others
        wanted.sort(key=lambda f: (f.key not in self._fresh, f.key in self._failed, f.event_id_min))
        todo = [f for f in wanted if f.key in self._fresh] + [f for f in wanted if f.key not in self._fresh][:backfill]
        added: list[tuple[FileInfo, FileStats]] = []
        for f in todo:
            try:
                added.append(self._publish(table, f))
                self._failed.discard(f.key)
            except LeaseLostError:
                raise
            except Exception as exc:  # the others go on; this one waits behind them next cycle
                self._failed.add(f.key)
                self.forget([f.key])
                log.warning("aggregates of %s not written (%s); tried again next cycle", f.key, exc)
        if added or stale:
            if self._before_commit is not None:
                self._before_commit()  # LakeError (lease lost or unverifiable): nothing committed
            # If this raises, the commit may have landed: the files stay (unique names; an uncommitted one is
            # deleted by the clean-up after grace, like any file out of its table).
            table.update(added, stale)
        self.forget([f.key for f in todo])
        if added or stale:
            log.info("aggregates table: %d file(s) added, %d removed", len(added), len(stale))
        return len(added), len(stale)

    def _publish(self, table: AggregatesTable, f: DataFile) -> tuple[FileInfo, FileStats]:
        """Write and publish the aggregates of ``f`` under a new name (nothing is ever overwritten)."""
        where = PurePosixPath(table.key_for(f.key))
        tmp = self._fresh.pop(f.key, None)
        if tmp is None:
            tmp = self.storage.new_temp_path(f"{KIND}-{aggregates.ZONE}-{where.name}")
        try:
            if not tmp.exists():
                aggregates.write_persisted(self._compute(f), str(tmp))
            counts = pq.read_table(str(tmp), columns=[aggregates.SOURCE_ROWS])
            counted = aggregates.persisted_rows(counts)
            if counted != f.row_count:
                raise LakeError(f"the aggregates of {f.key} are of {counted} rows, not {f.row_count}")
            info = self.storage.publish(tmp, str(where.parent), where.name)
        finally:
            tmp.unlink(missing_ok=True)
        return info, FileStats.of_table(counts, aggregates.STATS_COLUMNS)

    def _compute(self, f: DataFile) -> pa.Table:
        """The persisted rows of the published data file ``f`` (read once, a chunk at a time)."""
        if isinstance(self.storage, LocalStorage):
            levels = aggregates.compute_file(str(self.storage.path(f.key)))
        else:
            with self.storage.open_input(f.key) as source:
                levels = aggregates.compute_file(source)
        return aggregates.to_persisted(levels, f.row_count)


__all__ = ["BACKFILL_PER_CYCLE", "AggregateSync", "Persisted"]
