"""The compactor: snapshot, output format, sizes (tiering and ceiling), grace deletion, foreign files."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import layout
from lake.compaction import STEP_PUBLISHED, STEP_WRITING, STEP_WRITTEN, CompactionMetrics, Compactor
from lake.liveset import live_set
from lake.parquet import ROW_GROUP_ROWS, badge_metadata, write_file
from lake.storage import FileInfo, LocalStorage
from testkit.ids import assert_exactly_once, live_ids
from testkit.landing import clone_landing, compactor_temp, publish_landing
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
    publish_landing(storage, 0, 25_000, 24)
    return storage


def _compactor(storage: LocalStorage, settings: Settings, **kwargs: object) -> Compactor:
    kwargs.setdefault("foreign_min_age_seconds", 0.0)
    return Compactor(storage, settings, **kwargs)  # type: ignore[arg-type]


def _only(metrics: CompactionMetrics | None) -> CompactionMetrics:
    assert metrics is not None, "a compaction was expected to run"
    return metrics


def _future(seconds: float) -> float:
    return time.time() + seconds


# -- trigger and snapshot ---------------------------------------------------------------------------------


def test_empty_lake_is_a_normal_cycle(storage: LocalStorage, settings: Settings) -> None:
    report = _compactor(storage, settings).run_cycle()
    assert report.compactions == [] and report.deleted == [] and report.quarantined == []


def test_not_due_below_min_files(storage: LocalStorage, settings: Settings) -> None:
    files = publish_landing(storage, 0, 1_000, settings.compaction_min_files - 1)
    assert _compactor(storage, settings).compact() is None
    assert live_set(storage).keys == [f.key for f in files]
    assert storage.list_files(layout.COMPACTED) == []


def test_compacts_the_snapshot_into_one_sorted_snappy_file(storage: LocalStorage, settings: Settings) -> None:
    files = publish_landing(storage, 0, 2_000, 8)
    expected = pa.concat_tables([pq.read_table(storage.path(f.key)) for f in files])

    metrics = _only(_compactor(storage, settings).compact())

    assert metrics.files_in == 8 and metrics.landing_in == 8 and metrics.rows == 16_000
    assert metrics.bytes_in == sum(f.size for f in files)
    [out] = metrics.outputs
    assert live_set(storage).keys == [out]
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


def test_row_groups_are_sized_for_pruning(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MAX_MB=64)
    rows = ROW_GROUP_ROWS + 40_000
    publish_landing(storage, 0, rows // 8, 8)
    [out] = _only(_compactor(storage, settings).compact()).outputs
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
        _compactor(storage, settings).compact()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compacted ")]
    assert len(lines) == 1
    assert "compacted 8 files (8 landing + 0 compacted) -> 1 file(s): 8,000 rows" in lines[0]
    assert " MB -> " in lines[0] and " s (" in lines[0]


def test_files_landing_mid_compaction_survive_untouched(storage: LocalStorage, settings: Settings) -> None:
    snapshot = publish_landing(storage, 0, 1_000, 8)
    late: list[FileInfo] = []

    def hook(step: str, _detail: str) -> None:
        if step == STEP_WRITING and not late:
            late.extend(publish_landing(storage, 8_000, 1_000, 3))

    clock = [time.time()]
    compactor = _compactor(storage, settings, hook=hook, clock=lambda: clock[0])
    metrics = _only(compactor.compact())
    assert late, "the hook did not run"
    assert json.loads(storage.read_metadata(metrics.outputs[0])[layout.META_SOURCES]) == [f.key for f in snapshot]
    live = live_set(storage)
    assert {f.key for f in late} <= set(live.keys)
    clock[0] = _future(settings.compaction_grace_seconds + 1)
    compactor.delete_due()
    for f in late:  # untouched: same size and mtime, still live
        assert storage.list_files(layout.LANDING).count(f) == 1
    assert all(not storage.exists(f.key) for f in snapshot)
    assert_exactly_once(storage, range(11_000))


# -- sizes: tiering and the ceiling -------------------------------------------------------------------------


def test_small_compacted_files_are_merged_again_with_later_inputs(storage: LocalStorage, settings: Settings) -> None:
    compactor = _compactor(storage, settings)
    publish_landing(storage, 0, 1_000, 8)
    first = _only(compactor.compact())
    [small] = first.outputs
    assert storage.list_files(layout.COMPACTED)[0].size < settings.compaction_target_min_bytes

    later = publish_landing(storage, 8_000, 1_000, 8)
    second = _only(compactor.compact())
    assert second.compacted_in == 1 and second.landing_in == 8
    [merged] = second.outputs
    assert json.loads(storage.read_metadata(merged)[layout.META_SOURCES]) == [small] + [f.key for f in later]
    assert live_set(storage).keys == [merged]
    assert np.array_equal(live_ids(storage), np.arange(16_000))  # one file, in event-id order


def test_large_compacted_files_are_left_alone(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=8)
    compactor = _compactor(storage, settings)
    publish_landing(storage, 0, 20_000, 8)
    [big] = _only(compactor.compact()).outputs
    assert storage.list_files(layout.COMPACTED)[0].size >= settings.compaction_target_min_bytes
    publish_landing(storage, 160_000, 1_000, 8)
    second = _only(compactor.compact())
    assert second.compacted_in == 0
    assert big in live_set(storage).keys


@pytest.mark.parametrize("files", [15, 24])
def test_outputs_respect_the_ceiling_and_are_balanced(
    storage: LocalStorage, lake_root: Path, template: LocalStorage, files: int
) -> None:
    # 15 files: about 4.5 MB of output under a 4 MB ceiling; a greedy cut would leave a 0.7 MB remainder.
    # 24 files: about 7.2 MB; a greedy cut would still leave 3.4 MB, the balanced one two halves.
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=2, COMPACTION_TARGET_MAX_MB=4)
    clone_landing(template, storage, limit=files)
    metrics = _only(_compactor(storage, settings).compact())
    sizes = metrics.output_sizes
    assert len(sizes) == 2
    assert max(sizes) <= settings.compaction_target_max_bytes
    assert max(sizes) - min(sizes) <= 1.05 * sum(sizes) / files  # balanced: within one input's share
    live = live_set(storage)
    assert live.keys == metrics.outputs  # ordered and contiguous: each output's range is its own
    for a, b in zip(live.files, live.files[1:], strict=False):
        assert a.event_id_max + 1 == b.event_id_min
    assert_exactly_once(storage, range(files * 25_000))


def test_the_ceiling_is_strict_even_when_the_estimate_is_badly_wrong(
    storage: LocalStorage, lake_root: Path, template: LocalStorage
) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1)
    clone_landing(template, storage)
    # 0.5 bytes per row (about 20x too low) and outputs smaller than one row group, so nothing is measured
    # before the first output closes: it ends above the ceiling and is written again with fewer inputs.
    metrics = _only(_compactor(storage, settings, bytes_per_row=0.5).compact())
    assert metrics.rewrites == 1  # the discarded output taught the model: later outputs fit at once
    assert max(metrics.output_sizes) <= settings.compaction_target_max_bytes
    assert storage.list_all(layout.TEMP) == []
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
    metrics = _only(_compactor(storage, settings).compact())
    predicted, actual = metrics.predicted_sizes, metrics.output_sizes
    assert len(actual) >= 3 and metrics.rewrites == 0
    assert 0.25 < metrics.bytes_out / metrics.bytes_in < 0.95
    errors = [abs(p / a - 1) for p, a in zip(predicted, actual, strict=True)]
    assert max(errors) < 0.02, errors
    assert max(actual) <= settings.compaction_target_max_bytes


def test_a_single_input_above_the_ceiling_is_compacted_alone(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1, COMPACTION_MIN_FILES=2)
    big = write_file(storage, lake_table(0, 150_000), layout.LANDING, "landing")
    small = write_file(storage, lake_table(150_000, 1_000), layout.LANDING, "landing")
    assert big.size > settings.compaction_target_max_bytes
    metrics = _only(_compactor(storage, settings).compact())
    assert len(metrics.outputs) == 2
    assert [json.loads(storage.read_metadata(o)[layout.META_SOURCES]) for o in metrics.outputs] == [
        [big.key],
        [small.key],
    ]
    assert_exactly_once(storage, range(151_000))


# -- grace-period deletion ----------------------------------------------------------------------------------


def test_sources_are_deleted_only_after_the_grace_period(storage: LocalStorage, settings: Settings) -> None:
    sources = publish_landing(storage, 0, 1_000, 8)
    clock = [time.time()]
    compactor = _compactor(storage, settings, clock=lambda: clock[0])
    [out] = _only(compactor.compact()).outputs
    committed = storage.list_files(layout.COMPACTED)[0].mtime_ns / 1e9

    clock[0] = committed + settings.compaction_grace_seconds - 0.01
    assert compactor.delete_due() == []
    assert all(storage.exists(f.key) for f in sources)

    clock[0] = committed + settings.compaction_grace_seconds
    assert sorted(compactor.delete_due()) == sorted(f.key for f in sources)
    assert live_set(storage).keys == [out] and storage.exists(out)
    assert_exactly_once(storage, range(8_000))


def test_the_grace_period_runs_from_the_commit(storage: LocalStorage, settings: Settings) -> None:
    publish_landing(storage, 0, 1_000, 8)

    def slow_write(step: str, name: str) -> None:
        if step == STEP_WRITTEN:  # as if writing and fsyncing the output had taken an hour
            hour_ago = time.time() - 3600
            os.utime(storage.path(f"{layout.TEMP}/{name}"), (hour_ago, hour_ago))

    compactor = _compactor(storage, settings, hook=slow_write)
    _only(compactor.compact())
    assert compactor.delete_due() == []
    assert len(live_set(storage).replaced) == 8


def test_an_empty_landing_file_joins_a_run(storage: LocalStorage, settings: Settings) -> None:
    # Two compacted files above the floor (not candidates); the empty file sorts before both (it has no
    # ids) yet must not become a run, and an output, of its own.
    for lo in (0, 100_000):
        write_file(storage, lake_table(lo, 100_000), layout.COMPACTED, "compacted", {layout.META_SOURCES: "[]"})
    assert min(f.size for f in storage.list_files(layout.COMPACTED)) >= settings.compaction_target_min_bytes
    empty = write_file(storage, lake_table(0, 0), layout.LANDING, "landing")
    publish_landing(storage, 200_000, 1_000, 8)
    metrics = _only(_compactor(storage, settings).compact())
    [out] = metrics.outputs
    assert empty.key in json.loads(storage.read_metadata(out)[layout.META_SOURCES])
    assert_exactly_once(storage, range(208_000))


def test_a_replaced_compacted_file_goes_only_after_its_own_sources(storage: LocalStorage, settings: Settings) -> None:
    clock = [time.time()]
    order: list[str] = []
    compactor = _compactor(
        storage, settings, clock=lambda: clock[0], hook=lambda s, k: order.append(k) if s == "deleting" else None
    )
    leaves = publish_landing(storage, 0, 1_000, 8)
    [small] = _only(compactor.compact()).outputs
    publish_landing(storage, 8_000, 1_000, 8)
    _only(compactor.compact())

    # Make the leaves not due yet (their namer looks newer) while ``small`` itself is due:
    # ``small`` must wait, or the leaves would come back to life beside the merged file.
    future = time.time() + 3600
    os.utime(storage.path(small), (future, future))
    clock[0] = time.time() + settings.compaction_grace_seconds + 1
    deleted = compactor.delete_due()
    assert small not in deleted and storage.exists(small)
    assert all(storage.exists(f.key) for f in leaves)
    assert_exactly_once(storage, range(16_000))

    # Once everything is due the leaves go first, then ``small``.
    order.clear()
    clock[0] = future + settings.compaction_grace_seconds + 1
    deleted = compactor.delete_due()
    assert order.index(small) > max(order.index(f.key) for f in leaves)
    assert not storage.exists(small) and all(not storage.exists(f.key) for f in leaves)
    assert_exactly_once(storage, range(16_000))


# -- foreign, corrupt and odd inputs ------------------------------------------------------------------------


def _sidecar(storage: LocalStorage, key: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(storage.path(key + ".reason.json").read_text())
    return data


def test_foreign_and_corrupt_files_are_quarantined_and_compaction_goes_on(
    storage: LocalStorage, settings: Settings
) -> None:
    publish_landing(storage, 0, 1_000, 8)
    (storage.path("landing/junk.parquet")).write_bytes(b"PAR1 junk bytes, not Parquet at all")
    pq.write_table(pa.table({"x": [1, 2, 3]}), storage.path("landing/no-badge.parquet"))
    (storage.path("landing/notes.txt")).write_text("hello")

    report = _compactor(storage, settings).run_cycle()

    assert sorted(report.quarantined) == [
        "quarantine/junk.parquet",
        "quarantine/no-badge.parquet",
        "quarantine/notes.txt",
    ]
    assert "not readable Parquet" in _sidecar(storage, "quarantine/junk.parquet")["reason"]
    assert "badge metadata" in _sidecar(storage, "quarantine/no-badge.parquet")["reason"]
    assert _sidecar(storage, "quarantine/notes.txt")["original"] == "landing/notes.txt"
    assert [f.name for f in storage.list_all(layout.LANDING) if not f.name.startswith("landing-")] == []
    assert len(report.compactions) == 1 and report.compactions[0].files_in == 8
    assert live_set(storage).invalid == ()
    assert_exactly_once(storage, range(8_000))


def test_a_fresh_foreign_file_gets_time_before_it_is_judged(storage: LocalStorage, settings: Settings) -> None:
    storage.path("landing/copying.parquet").write_bytes(b"PAR1 half")
    clock = [time.time()]
    compactor = Compactor(storage, settings, clock=lambda: clock[0], foreign_min_age_seconds=5.0)
    assert compactor.quarantine_foreign() == []
    clock[0] += 6
    assert compactor.quarantine_foreign() == ["quarantine/copying.parquet"]


def _corrupt_data_pages(path: Path) -> None:
    """Flip bytes in the column data, keeping the footer (and its badge metadata) readable."""
    raw = bytearray(path.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    for i in range(64, len(raw) - footer - 64, 3):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_an_input_with_corrupt_data_pages_is_quarantined(storage: LocalStorage, settings: Settings) -> None:
    files = publish_landing(storage, 0, 1_000, 9)
    bad = files[4]
    _corrupt_data_pages(storage.path(bad.key))
    report = _compactor(storage, settings).run_cycle()
    assert storage.exists("quarantine/" + bad.name) and "decod" in _sidecar(storage, "quarantine/" + bad.name)["reason"]
    assert report.quarantined == ["quarantine/" + bad.name]
    assert sum(m.files_in for m in report.compactions) == 8  # the others were compacted in a later snapshot
    assert storage.list_all(layout.TEMP) == []
    ids = np.sort(live_ids(storage))
    assert np.array_equal(ids, np.concatenate([np.arange(0, 4_000), np.arange(5_000, 9_000)]))


@pytest.mark.parametrize(
    ("meta", "reason"),
    [((8_000, 8_499, 500), "outside its metadata"), ((8_000, 8_999, 2_000), "its metadata says 2000")],
)
def test_an_input_whose_metadata_lies_is_quarantined(
    storage: LocalStorage, settings: Settings, meta: tuple[int, int, int], reason: str
) -> None:
    publish_landing(storage, 0, 1_000, 8)
    liar = write_file(storage, lake_table(8_000, 1_000), layout.LANDING, "landing", badge_metadata(*meta))
    report = _compactor(storage, settings).run_cycle()
    assert report.quarantined == ["quarantine/" + liar.name]
    assert reason in _sidecar(storage, "quarantine/" + liar.name)["reason"]
    assert_exactly_once(storage, range(8_000))


def test_an_unsorted_input_is_sorted_not_rejected(storage: LocalStorage, settings: Settings) -> None:
    publish_landing(storage, 0, 1_000, 7)
    shuffled = lake_table(7_000, 1_000)
    shuffled = shuffled.take(pa.array(np.random.default_rng(1).permutation(1_000)))
    write_file(storage, shuffled, layout.LANDING, "landing")
    report = _compactor(storage, settings).run_cycle()
    assert report.quarantined == [] and report.compactions[0].files_in == 8
    assert np.array_equal(live_ids(storage), np.arange(8_000))


def test_nullable_inputs_are_cast_and_incompatible_ones_quarantined(storage: LocalStorage, settings: Settings) -> None:
    publish_landing(storage, 0, 1_000, 7)
    nullable = lake_table(7_000, 1_000)
    nullable = nullable.cast(pa.schema([f.with_nullable(True) for f in LAKE_SCHEMA]))
    write_file(storage, nullable, layout.LANDING, "landing")
    missing = write_file(storage, lake_table(8_000, 10).drop_columns(["duration_s"]), layout.LANDING, "landing")
    report = _compactor(storage, settings).run_cycle()
    assert report.quarantined == ["quarantine/" + missing.name]
    assert "columns" in _sidecar(storage, "quarantine/" + missing.name)["reason"]
    assert report.compactions[-1].files_in == 8
    assert pq.read_schema(storage.path(report.compactions[-1].outputs[0])).equals(LAKE_SCHEMA, check_metadata=False)
    assert_exactly_once(storage, range(8_000))


def test_overlapping_files_are_left_alone(storage: LocalStorage, settings: Settings) -> None:
    files = publish_landing(storage, 0, 1_000, 8)
    copy = write_file(storage, lake_table(3_000, 1_000), layout.LANDING, "landing")  # duplicates files[3]
    metrics = _only(_compactor(storage, settings).compact())
    assert metrics.files_in == 7
    assert storage.exists(copy.key) and storage.exists(files[3].key)
    assert {copy.key, files[3].key} <= set(live_set(storage).keys)


def test_stop_ends_the_compaction_between_steps(storage: LocalStorage, lake_root: Path, template: LocalStorage) -> None:
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=2)
    clone_landing(template, storage)
    stop = threading.Event()

    def hook(step: str, _detail: str) -> None:
        if step == STEP_PUBLISHED:
            stop.set()

    compactor = _compactor(storage, settings, hook=hook, stop=stop)
    metrics = _only(compactor.compact())
    assert metrics.interrupted and len(metrics.outputs) == 1
    assert compactor_temp(storage) == []
    assert_exactly_once(storage, range(TEMPLATE_ROWS))
    assert compactor.run_cycle().compactions == []  # stays stopped
