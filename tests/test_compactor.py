"""The compactor against the lake's table: the snapshot, the one commit, output format, sizes (tiering and the
ceiling), inputs that cannot be read, and stopping. The clean-up after grace is tested in test_cleanup.py,
faults (I/O errors, forgeries, stale inputs) in test_compactor_faults.py."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import layout
from lake.compaction import (
    STEP_COMMITTED,
    STEP_PUBLISHED,
    STEP_WRITING,
    CompactionMetrics,
    Compactor,
)
from lake.parquet import ROW_GROUP_ROWS, badge_metadata, write_file
from lake.storage import FileInfo, LocalStorage
from lake.table import OPERATION_KEY, has_log, read_snapshot
from testkit.ids import assert_exactly_once, live_ids
from testkit.landing import (
    clone_landing,
    commit_actions,
    commit_files,
    compactor_temp,
    disk_keys,
    publish_landing,
    table_keys,
)
from testkit.processes import make_settings
from testkit.records import lake_table
from utils.config import Settings
from utils.records import LAKE_SCHEMA

MB = 1024 * 1024
TEMPLATE_ROWS = 600_000  # 24 landing files of 25,000 rows: about 6.5 MB once compacted


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> LocalStorage:
    """A lake of 24 landing files written once per module; tests hard-link them into their own lake."""
    storage = LocalStorage(tmp_path_factory.mktemp("template") / "lake")
    storage.ensure_layout()
    publish_landing(storage, 0, 25_000, 24, commit=False)
    return storage


def _only(metrics: CompactionMetrics | None) -> CompactionMetrics:
    assert metrics is not None, "a compaction was expected to run"
    return metrics


def _sources(storage: LocalStorage, key: str) -> list[str]:
    sources: list[str] = json.loads(storage.read_metadata(key)[layout.META_SOURCES])
    return sources


def _write_committed(storage: LocalStorage, table: pa.Table, zone: str = layout.LANDING) -> FileInfo:
    info = write_file(storage, table, zone, zone)
    commit_files(storage, [info])
    return info


# -- trigger and snapshot ---------------------------------------------------------------------------------


def test_a_lake_without_a_table_is_a_normal_cycle(storage: LocalStorage, settings: Settings) -> None:
    report = Compactor(storage, settings).run_cycle()
    assert report.compactions == [] and report.deleted == [] and report.unreadable == []
    assert not has_log(storage.root)  # the compactor waits for the pipeline to create the table


def test_not_due_below_min_files(storage: LocalStorage, settings: Settings) -> None:
    files = publish_landing(storage, 0, 1_000, settings.compaction_min_files - 1)
    # uncommitted files are not the lake: they do not make a compaction due either
    publish_landing(storage, 100_000, 1_000, 5, commit=False)
    assert Compactor(storage, settings).compact() is None
    assert table_keys(storage) == [f.key for f in files]
    assert storage.list_tree(layout.COMPACTED) == []


def test_compacts_the_snapshot_into_one_sorted_snappy_file_in_one_commit(
    storage: LocalStorage, settings: Settings
) -> None:
    files = publish_landing(storage, 0, 2_000, 8)
    expected = pa.concat_tables([pq.read_table(storage.path(f.key)) for f in files])
    before = read_snapshot(storage).version
    assert before is not None

    metrics = _only(Compactor(storage, settings).compact())

    assert metrics.files_in == 8 and metrics.landing_in == 8 and metrics.rows == 16_000
    assert metrics.bytes_in == sum(f.size for f in files)
    assert metrics.version == before + 1  # one commit
    [out] = metrics.outputs
    snap = read_snapshot(storage)
    assert snap.version == before + 1 and snap.keys == [out]
    [f] = snap.files
    assert (f.event_id_min, f.event_id_max, f.row_count) == (0, 15_999, 16_000)  # statistics in the log
    assert snap.committed_event_id == 15_999  # the pipeline's position is untouched

    actions = commit_actions(storage)
    removes = [a["remove"] for a in actions if "remove" in a]
    adds = [a["add"] for a in actions if "add" in a]
    assert sorted(r["path"] for r in removes) == sorted(f.key for f in files)
    assert [a["path"] for a in adds] == [out]
    assert all(r["dataChange"] is False for r in removes) and all(a["dataChange"] is False for a in adds)
    assert json.loads(adds[0]["stats"])["numRecords"] == 16_000
    [info] = [a["commitInfo"] for a in actions if "commitInfo" in a]
    assert info[OPERATION_KEY] == "compaction"

    meta = pq.read_metadata(storage.path(out))
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    assert {k: kv[k] for k in badge_metadata(0, 0, 0, [])} == badge_metadata(0, 15_999, 16_000, [f.key for f in files])
    for rg in range(meta.num_row_groups):
        for col in range(meta.num_columns):
            assert meta.row_group(rg).column(col).compression == "SNAPPY"
    table = pq.read_table(storage.path(out))
    assert table.schema.equals(LAKE_SCHEMA, check_metadata=False)
    assert table.equals(expected.cast(LAKE_SCHEMA))  # same rows, same order, every column
    assert storage.list_all(layout.TEMP) == []
    assert all(storage.exists(f.key) for f in files)  # out of the table, on disk until the grace period ends


def test_row_groups_are_sized_for_pruning(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MAX_MB=64)
    rows = ROW_GROUP_ROWS + 40_000
    publish_landing(storage, 0, rows // 8, 8)
    [out] = _only(Compactor(storage, settings).compact()).outputs
    meta = pq.read_metadata(storage.path(out))
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [ROW_GROUP_ROWS, rows - ROW_GROUP_ROWS]
    # event-id order keeps each row group's statistics tight and disjoint: DuckDB can skip groups
    ranges = [meta.row_group(i).column(0).statistics for i in range(meta.num_row_groups)]
    assert ranges[0].max < ranges[1].min


def test_one_log_line_per_compaction(
    storage: LocalStorage, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    publish_landing(storage, 0, 1_000, 8)
    with caplog.at_level(logging.INFO, logger="lake.compaction"):
        Compactor(storage, settings).compact()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compacted ")]
    assert len(lines) == 1
    assert "compacted 8 files (8 landing + 0 compacted) -> 1 file(s): 8,000 rows" in lines[0]
    assert " MB -> " in lines[0] and " s (" in lines[0]


def test_files_committed_mid_compaction_survive_untouched(storage: LocalStorage, settings: Settings) -> None:
    snapshot = publish_landing(storage, 0, 1_000, 8)
    late: list[FileInfo] = []

    def hook(step: str, _detail: str) -> None:
        if step == STEP_WRITING and not late:  # the pipeline appends while the compactor writes
            late.extend(publish_landing(storage, 8_000, 1_000, 3))

    metrics = _only(Compactor(storage, settings, hook=hook).compact())
    assert late, "the hook did not run"
    assert _sources(storage, metrics.outputs[0]) == [f.key for f in snapshot]
    assert table_keys(storage) == metrics.outputs + [f.key for f in late]
    assert read_snapshot(storage).committed_event_id == 10_999
    assert_exactly_once(storage, range(11_000))


# -- sizes: tiering and the ceiling -------------------------------------------------------------------------


def test_small_compacted_files_are_merged_again_with_later_inputs(storage: LocalStorage, settings: Settings) -> None:
    compactor = Compactor(storage, settings)
    publish_landing(storage, 0, 1_000, 8)
    first = _only(compactor.compact())
    [small] = first.outputs
    assert storage.list_tree(layout.COMPACTED)[0].size < settings.compaction_target_min_bytes

    later = publish_landing(storage, 8_000, 1_000, 8)
    second = _only(compactor.compact())
    assert second.compacted_in == 1 and second.landing_in == 8
    [merged] = second.outputs
    assert _sources(storage, merged) == [small] + [f.key for f in later]
    assert table_keys(storage) == [merged]
    assert np.array_equal(live_ids(storage), np.arange(16_000))  # one file, in event-id order


def test_large_compacted_files_are_left_alone(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=8)
    compactor = Compactor(storage, settings)
    publish_landing(storage, 0, 20_000, 8)
    [big] = _only(compactor.compact()).outputs
    assert storage.list_tree(layout.COMPACTED)[0].size >= settings.compaction_target_min_bytes
    publish_landing(storage, 160_000, 1_000, 8)
    second = _only(compactor.compact())
    assert second.compacted_in == 0
    assert big in table_keys(storage)


@pytest.mark.parametrize("files", [15, 24])
def test_outputs_respect_the_ceiling_and_are_balanced(
    storage: LocalStorage, lake_root: Path, template: LocalStorage, files: int
) -> None:
    # 15 files: about 4.5 MB of output under a 4 MB ceiling; a greedy cut would leave a 0.7 MB remainder.
    # 24 files: about 7.2 MB; a greedy cut would still leave 3.4 MB, the balanced one two halves.
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=2, COMPACTION_TARGET_MAX_MB=4)
    clone_landing(template, storage, limit=files)
    metrics = _only(Compactor(storage, settings).compact())
    sizes = metrics.output_sizes
    assert len(sizes) == 2
    assert max(sizes) <= settings.compaction_target_max_bytes
    assert max(sizes) - min(sizes) <= 1.05 * sum(sizes) / files  # balanced: within one input's share
    snap = read_snapshot(storage)
    assert snap.keys == metrics.outputs  # ordered and contiguous: each output's range is its own
    for a, b in zip(snap.files, snap.files[1:], strict=False):
        assert a.event_id_max + 1 == b.event_id_min
    assert_exactly_once(storage, range(files * 25_000))


def test_the_ceiling_is_strict_even_when_the_estimate_is_badly_wrong(
    storage: LocalStorage, lake_root: Path, template: LocalStorage
) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1)
    clone_landing(template, storage)
    # 0.5 bytes per row (about 20x too low) and outputs smaller than one row group, so nothing is measured
    # before the first output closes: it ends above the ceiling and is written again with fewer inputs.
    metrics = _only(Compactor(storage, settings, bytes_per_row=0.5).compact())
    assert metrics.rewrites == 1  # the discarded output taught the model: later outputs fit at once
    assert max(metrics.output_sizes) <= settings.compaction_target_max_bytes
    assert storage.list_all(layout.TEMP) == []
    assert sorted(disk_keys(storage)) == sorted(
        [f.key for f in template.list_tree(layout.LANDING)] + metrics.outputs
    )  # the discarded output left nothing behind
    assert_exactly_once(storage, range(TEMPLATE_ROWS))


def test_size_estimate_error(storage: LocalStorage, lake_root: Path, template: LocalStorage) -> None:
    """The estimate's error, stated. Input bytes are a poor guide: small landing files each carry their own
    dictionary pages and footer, and compact to about 80 % of their size (37 % with pyarrow's default
    encodings). So the compactor encodes a sample in memory to learn
    bytes per row and fixed bytes per row group, then relearns from every output: predictions made when
    an output starts land within 2 % of its final size (0.1 % measured here). The writer also measures
    as it goes and rewrites an output that ends above the ceiling, so the ceiling holds regardless."""
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=2)
    clone_landing(template, storage)
    metrics = _only(Compactor(storage, settings).compact())
    predicted, actual = metrics.predicted_sizes, metrics.output_sizes
    assert len(actual) >= 3 and metrics.rewrites == 0
    assert 0.25 < metrics.bytes_out / metrics.bytes_in < 0.95
    errors = [abs(p / a - 1) for p, a in zip(predicted, actual, strict=True)]
    assert max(errors) < 0.02, errors
    assert max(actual) <= settings.compaction_target_max_bytes


def test_a_single_input_above_the_ceiling_is_compacted_alone(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1, COMPACTION_MIN_FILES=2)
    big = _write_committed(storage, lake_table(0, 150_000))
    small = _write_committed(storage, lake_table(150_000, 1_000))
    assert big.size > settings.compaction_target_max_bytes
    metrics = _only(Compactor(storage, settings).compact())
    assert len(metrics.outputs) == 2
    assert [_sources(storage, o) for o in metrics.outputs] == [[big.key], [small.key]]
    assert_exactly_once(storage, range(151_000))


def test_an_empty_landing_file_joins_a_run(storage: LocalStorage, settings: Settings) -> None:
    # Two compacted files above the floor (not candidates); the empty file sorts before both (it has no
    # ids) yet must not become a run, and an output, of its own.
    for lo in (0, 100_000):
        _write_committed(storage, lake_table(lo, 100_000), layout.COMPACTED)
    assert min(f.size for f in storage.list_tree(layout.COMPACTED)) >= settings.compaction_target_min_bytes
    empty = _write_committed(storage, lake_table(0, 0))
    publish_landing(storage, 200_000, 1_000, 8)
    metrics = _only(Compactor(storage, settings).compact())
    [out] = metrics.outputs
    assert empty.key in _sources(storage, out)
    assert empty.key not in table_keys(storage)
    assert_exactly_once(storage, range(208_000))


# -- inputs that cannot be read: reported, left in the table, tried again next cycle -------------------------


def _corrupt_data_pages(path: Path) -> None:
    """Flip bytes in the column data, keeping the footer readable."""
    raw = bytearray(path.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    for i in range(64, len(raw) - footer - 64, 3):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def _nothing_quarantined(storage: LocalStorage) -> None:
    assert storage.list_all(layout.QUARANTINE) == [] and not (storage.root / layout.QUARANTINE / "_delta_log").exists()


def test_an_input_with_corrupt_data_pages_stays_in_the_table_and_the_others_are_compacted(
    storage: LocalStorage, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    files = publish_landing(storage, 0, 1_000, 9)
    bad = files[4]
    _corrupt_data_pages(storage.path(bad.key))
    compactor = Compactor(storage, settings)
    with caplog.at_level(logging.ERROR, logger="lake.compaction"):
        report = compactor.run_cycle()
    assert report.unreadable == [bad.key]
    assert any(bad.key in r.getMessage() and "tried again next cycle" in r.getMessage() for r in caplog.records)
    # the others were compacted around it, in runs that do not span it
    assert sum(m.files_in for m in report.compactions) == 8
    snap = read_snapshot(storage)
    assert bad.key in snap.keys and storage.exists(bad.key) and len(snap.keys) == 3
    assert snap.rows == 9_000 and snap.committed_event_id == 8_999  # nothing left the table
    _nothing_quarantined(storage)
    assert storage.list_all(layout.TEMP) == []
    good = [p for f, p in zip(snap.files, snap.paths, strict=True) if f.key != bad.key]
    ids = np.sort(np.concatenate([pq.read_table(p, columns=["event_id"])["event_id"].to_numpy() for p in good]))
    assert np.array_equal(ids, np.concatenate([np.arange(0, 4_000), np.arange(5_000, 9_000)]))

    # The next cycle that is due tries it again (still unreadable: still reported, still in the table).
    publish_landing(storage, 9_000, 1_000, 8)
    again = compactor.run_cycle()
    assert again.unreadable == [bad.key] and again.compactions[-1].landing_in == 8
    assert bad.key in table_keys(storage) and read_snapshot(storage).rows == 17_000


def test_an_input_whose_rows_contradict_its_statistics_is_reported_not_dropped(
    storage: LocalStorage, settings: Settings
) -> None:
    files = publish_landing(storage, 0, 1_000, 9)
    liar = files[8]
    # The file on disk is replaced by one with twice the rows: its statistics in the log no longer hold.
    pq.write_table(lake_table(8_000, 2_000), storage.path(liar.key))
    report = Compactor(storage, settings).run_cycle()
    assert report.unreadable == [liar.key]
    snap = read_snapshot(storage)
    assert liar.key in snap.keys and snap.rows == 9_000
    assert sum(m.files_in for m in report.compactions) == 8
    _nothing_quarantined(storage)


def test_an_unsorted_input_is_sorted_not_rejected(storage: LocalStorage, settings: Settings) -> None:
    publish_landing(storage, 0, 1_000, 7)
    shuffled = lake_table(7_000, 1_000)
    shuffled = shuffled.take(pa.array(np.random.default_rng(1).permutation(1_000)))
    _write_committed(storage, shuffled)
    report = Compactor(storage, settings).run_cycle()
    assert report.unreadable == [] and report.compactions[0].files_in == 8
    assert np.array_equal(live_ids(storage), np.arange(8_000))


def test_nullable_inputs_are_cast_and_incompatible_ones_reported(storage: LocalStorage, settings: Settings) -> None:
    publish_landing(storage, 0, 1_000, 7)
    nullable = lake_table(7_000, 1_000)
    nullable = nullable.cast(pa.schema([f.with_nullable(True) for f in LAKE_SCHEMA]))
    _write_committed(storage, nullable)
    missing = _write_committed(storage, lake_table(8_000, 10).drop_columns(["duration_s"]))
    report = Compactor(storage, settings).run_cycle()
    assert report.unreadable == [missing.key]
    assert report.compactions[-1].files_in == 8
    out = report.compactions[-1].outputs[0]
    assert pq.read_schema(storage.path(out)).equals(LAKE_SCHEMA, check_metadata=False)
    assert table_keys(storage) == [out, missing.key]
    _nothing_quarantined(storage)


def test_overlapping_files_are_left_alone(storage: LocalStorage, settings: Settings) -> None:
    files = publish_landing(storage, 0, 1_000, 8)
    copy = _write_committed(storage, lake_table(3_000, 1_000))  # the table holds files[3]'s ids twice
    metrics = _only(Compactor(storage, settings).compact())
    assert metrics.files_in == 7
    assert {copy.key, files[3].key} <= set(table_keys(storage))


# -- stopping ------------------------------------------------------------------------------------------------


def test_a_stop_commits_the_finished_outputs_with_exactly_their_inputs(
    storage: LocalStorage, lake_root: Path, template: LocalStorage
) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=2)
    inputs = [f.key for f in clone_landing(template, storage)]
    stop = threading.Event()
    steps: list[str] = []

    def hook(step: str, _detail: str) -> None:
        steps.append(step)
        if step == STEP_PUBLISHED:
            stop.set()

    compactor = Compactor(storage, settings, hook=hook, stop=stop)
    metrics = _only(compactor.compact())
    assert metrics.interrupted and len(metrics.outputs) == 1
    assert steps.count(STEP_COMMITTED) == 1  # the one commit, with what was finished
    [out] = metrics.outputs
    replaced = _sources(storage, out)
    assert replaced == inputs[: len(replaced)] and metrics.files_in == len(replaced)
    assert table_keys(storage) == [out, *inputs[len(replaced) :]]
    assert compactor_temp(storage) == []
    assert sorted(disk_keys(storage)) == sorted([*inputs, out])  # the unfinished output left nothing
    assert_exactly_once(storage, range(TEMPLATE_ROWS))
    assert compactor.run_cycle().compactions == []  # stays stopped
