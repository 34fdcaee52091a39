"""Where the stream starts: the setting wins; otherwise one value per lake, written once, read ever after,
and the same instant the lake's table records as its stream's identity."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.stream_state import STREAM_START_FILE, format_stream_start, parse_stream_start, resolve_stream_start
from ingestion.resume import identity_of, recover
from lake.storage import LocalStorage
from lake.table import read_snapshot
from source.client import ServiceIdentity
from testkit.processes import make_settings
from utils.errors import ConfigError, StreamMismatchError

T0 = datetime(2025, 3, 3, 9, 15, 42, 123456, tzinfo=UTC)


def test_the_setting_wins_and_writes_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake", GENERATOR_STREAM_START="2025-03-03T08:00:00Z")
    assert resolve_stream_start(settings) == datetime(2025, 3, 3, 8, tzinfo=UTC)
    assert not (tmp_path / "lake" / STREAM_START_FILE).exists()


def test_first_start_remembers_the_second_and_later_starts_read_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake")
    first = resolve_stream_start(settings, now=lambda: T0)
    assert first == T0.replace(microsecond=0)
    assert (tmp_path / "lake" / STREAM_START_FILE).read_text().strip() == "2025-03-03T09:15:42Z"
    later = resolve_stream_start(settings, now=lambda: T0 + timedelta(days=3))
    assert later == first
    assert [p.name for p in (tmp_path / "lake").iterdir()] == [STREAM_START_FILE]  # no temp file left


def test_a_new_lake_starts_a_new_stream(tmp_path: Path) -> None:
    a = resolve_stream_start(make_settings(tmp_path / "a"), now=lambda: T0)
    b = resolve_stream_start(make_settings(tmp_path / "b"), now=lambda: T0 + timedelta(hours=1))
    assert b - a == timedelta(hours=1)


def test_services_starting_together_agree_on_one_value(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake")
    results: list[datetime] = []
    barrier = threading.Barrier(8)

    def start(i: int) -> None:
        barrier.wait()
        results.append(resolve_stream_start(settings, now=lambda: T0 + timedelta(seconds=i)))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    assert len(set(results)) == 1


def test_a_corrupt_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / STREAM_START_FILE).write_text("yesterday\n")
    with pytest.raises(ConfigError) as info:
        resolve_stream_start(make_settings(lake))
    assert STREAM_START_FILE in str(info.value)
    assert "GENERATOR_STREAM_START" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-03T08:00:00Z", datetime(2025, 3, 3, 8, tzinfo=UTC)),
        ("2025-03-03T08:00:00", datetime(2025, 3, 3, 8, tzinfo=UTC)),  # naive means UTC
        ("2025-03-03T10:00:00+02:00", datetime(2025, 3, 3, 8, tzinfo=UTC)),
        (" 2025-03-03 ", datetime(2025, 3, 3, tzinfo=UTC)),
    ],
)
def test_parse_accepts_iso_instants(text: str, expected: datetime) -> None:
    assert parse_stream_start(text) == expected


@pytest.mark.parametrize("text", ["", "now", "2025-13-01", "1969-12-31T00:00:00Z", "2300-01-01T00:00:00Z"])
def test_parse_refuses_the_rest_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_stream_start(text)
    assert info.value.variable == "GENERATOR_STREAM_START"


def test_format_round_trips() -> None:
    moment = datetime(2025, 3, 3, 8, tzinfo=timezone(timedelta(hours=2)))
    assert format_stream_start(moment) == "2025-03-03T06:00:00Z"
    assert parse_stream_start(format_stream_start(T0)) == T0


def test_the_table_records_the_stream_start_the_service_remembers(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    settings = make_settings(lake, EVENTS_PER_SECOND=50)  # no GENERATOR_STREAM_START: remembered in the lake
    with TestClient(create_app(settings)) as client:
        reported = ServiceIdentity.from_json(client.get("/").json())
    remembered = (lake / STREAM_START_FILE).read_text().strip()
    assert reported.stream_start == remembered
    storage = LocalStorage(lake)
    assert read_snapshot(storage).version is None  # .stream_start is service state, not a data file
    recover(storage, identity_of(reported))  # what a starting pipeline does
    assert read_snapshot(storage).identity == identity_of(reported)
    # Another stream start (the file deleted, another written) is another stream: the table refuses it.
    (lake / STREAM_START_FILE).write_text("2025-01-01T00:00:00Z\n")
    with TestClient(create_app(make_settings(lake, EVENTS_PER_SECOND=50))) as client:
        other = ServiceIdentity.from_json(client.get("/").json())
    assert other.stream_start == "2025-01-01T00:00:00Z"
    with pytest.raises(StreamMismatchError, match=remembered):
        recover(storage, identity_of(other))
    assert read_snapshot(storage).identity == identity_of(reported)
