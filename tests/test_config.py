from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from testkit.processes import ROOT
from utils.config import SPECS, Settings, load_settings, settings_fields
from utils.errors import ConfigError


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    s = load_settings({}, env_file=None)
    assert s.data_lake_path == Path("./data_lake")
    assert s.employee_badge_logs_url == "http://127.0.0.1:8000/employee-badge-logs/"
    assert (s.batch_size, s.buffer_records, s.compaction_min_files) == (100_000, 100_000, 100)
    assert (s.compaction_target_min_mb, s.compaction_target_max_mb) == (100, 500)
    assert (s.retry_max_attempts, s.retry_backoff_base, s.retry_max_delay_seconds) == (5, 3.0, 60.0)
    assert s.api_fault_rate == 0.0
    assert s.flush_interval_seconds <= 5


def test_decimals_for_seconds_and_env_beats_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FLUSH_INTERVAL_SECONDS=0.5\nBATCH_SIZE=10\n")
    s = load_settings({"BATCH_SIZE": "20", "RETRY_BACKOFF_BASE": "1.5"}, env_file=env_file)
    assert s.flush_interval_seconds == 0.5
    assert s.batch_size == 20
    assert s.retry_backoff_base == 1.5


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("BATCH_SIZE", "0", "from 1 to 100000"),
        ("BATCH_SIZE", "100001", "from 1 to 100000"),
        ("BATCH_SIZE", "many", "an integer"),
        ("FLUSH_INTERVAL_SECONDS", "6", "to 5"),
        ("API_FAULT_RATE", "1.5", "from 0 to 1"),
        ("POLL_INTERVAL_SECONDS", "nan", "a number"),
        ("LOG_LEVEL", "LOUD", "one of"),
        ("EMPLOYEE_BADGE_LOGS_URL", "ftp://x", "http"),
        ("COMPACTION_TARGET_MAX_MB", "50", "COMPACTION_TARGET_MIN_MB"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value}, env_file=None)
    assert info.value.variable == name
    assert name in str(info.value)
    assert fragment in str(info.value)


def test_the_message_is_one_line_with_the_raw_value_and_the_cause_kept() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"BATCH_SIZE": "0", "GENERATOR_SEED": "-1"}, env_file=None)
    assert str(info.value) == "BATCH_SIZE='0' is invalid: an integer from 1 to 100000"  # the first field wins
    assert isinstance(info.value.__cause__, ValidationError)


def test_a_bad_value_in_dotenv_is_named_too(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("RETRY_MAX_ATTEMPTS=0\n")
    with pytest.raises(ConfigError, match=r"^RETRY_MAX_ATTEMPTS='0' is invalid: an integer from 1 to 100$"):
        load_settings({}, env_file=env_file)


def test_dotenv_reads_only_exact_names_and_ignores_strangers(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("batch_size=3\nAWS_REGION=eu-west-1\nAPI_PORT=9000\n")
    s = load_settings({}, env_file=env_file)
    assert (s.batch_size, s.api_port) == (100_000, 9000)


@pytest.mark.parametrize(("name", "value"), [("DATA_LAKE_PATH", ""), ("DATA_LAKE_PATH", "  "), ("API_HOST", "")])
def test_empty_is_refused_where_there_is_no_empty_meaning(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value}, env_file=None)
    assert info.value.variable == name


def test_blank_optional_is_none_and_values_are_normalised() -> None:
    s = load_settings(
        {"GENERATOR_STREAM_START": " ", "LOG_LEVEL": " debug ", "BATCH_SIZE": " 1_000 ", "DATA_LAKE_PATH": "~/lake"},
        env_file=None,
    )
    assert s.generator_stream_start is None
    assert s.log_level == "DEBUG"
    assert s.batch_size == 1_000
    assert s.data_lake_path == Path.home() / "lake"


def test_an_explicit_mapping_is_the_whole_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SIZE", "7")
    assert load_settings({}, env_file=None).batch_size == 100_000
    assert load_settings(env_file=None).batch_size == 7


def test_settings_are_frozen_and_hashable() -> None:
    s = load_settings({}, env_file=None)
    with pytest.raises(ValidationError):
        s.batch_size = 1
    assert {s: 1}[load_settings({}, env_file=None)] == 1
    assert s.compaction_target_max_bytes == 500 * 1024 * 1024


def test_replace_validates() -> None:
    s = load_settings({}, env_file=None)
    assert s.replace(batch_size=7).batch_size == 7
    with pytest.raises(ConfigError):
        s.replace(batch_size=-1)


def test_every_spec_has_a_field_and_round_trips() -> None:
    s = load_settings({}, env_file=None)
    env = s.as_env()
    assert set(env) == {spec.name for spec in SPECS}
    assert load_settings(env, env_file=None) == s
    assert settings_fields() == tuple(spec.field for spec in SPECS) == tuple(Settings.model_fields)


def test_env_example_comments_are_the_models_help_and_bounds() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    above = {line.split("=", 1)[0]: lines[i - 1] for i, line in enumerate(lines) if line[:1].isupper()}
    assert {spec.name: above.get(spec.name) for spec in SPECS} == {
        spec.name: f"# {spec.help} ({spec.allowed})" for spec in SPECS
    }


@pytest.mark.parametrize("inside", [False, True], ids=["the file", "a path under the file"])
def test_a_lake_path_that_is_a_file_is_refused(tmp_path: Path, inside: bool) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("not a lake\n")
    path = afile / "lake" if inside else afile
    with pytest.raises(ConfigError, match="DATA_LAKE_PATH") as info:
        load_settings({"DATA_LAKE_PATH": str(path)}, env_file=None)
    assert "directory" in str(info.value)
    assert load_settings({"DATA_LAKE_PATH": str(tmp_path / "new" / "lake")}, env_file=None)  # not there yet: fine


@pytest.mark.parametrize("url", ["gs://bucket", "file:///tmp/lake", "s3://", "s3://Bad_Bucket/x", "s3://b/p?x=1"])
def test_a_lake_url_other_than_s3_is_refused_not_taken_for_a_local_directory(url: str) -> None:
    # Reproduction: DATA_LAKE_PATH=s3://bucket/prefix became the local directory ./s3:/bucket/prefix.
    with pytest.raises(ConfigError, match="DATA_LAKE_PATH") as info:
        load_settings({"DATA_LAKE_PATH": url}, env_file=None)
    assert "s3://bucket/prefix" in str(info.value) and "local directory" in str(info.value)
    assert not (Path.cwd() / "gs:").exists() and not (Path.cwd() / "s3:").exists()


@pytest.mark.parametrize("url", ["s3://badge-lake/prefix", "S3://badge-lake", "s3://my.bucket-1/a/b/"])
def test_an_s3_lake_url_is_kept_as_written(url: str) -> None:
    settings = load_settings({"DATA_LAKE_PATH": url}, env_file=None)
    assert settings.data_lake_path == url and isinstance(settings.data_lake_path, str)
    with pytest.raises(ConfigError, match="the compactor does not run on object storage yet"):
        settings.local_lake_path("the compactor")


@pytest.mark.parametrize("command", [["pipeline.py", "--no-compaction"], ["-m", "lake", "stats"]])
def test_every_entry_point_refuses_a_lake_url_in_one_line(command: list[str]) -> None:
    env = {**os.environ, "DATA_LAKE_PATH": "gs://bucket/lake", "EMPLOYEE_BADGE_LOGS_URL": "http://127.0.0.1:9/x/"}
    out = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DATA_LAKE_PATH='gs://bucket/lake'"), lines
    assert not (ROOT / "gs:").exists()


@pytest.mark.parametrize("command", [["pipeline.py", "--no-compaction"], ["-m", "lake", "stats"]])
def test_every_entry_point_refuses_a_lake_path_that_is_a_file_in_one_line(tmp_path: Path, command: list[str]) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("not a lake\n")
    env = {**os.environ, "DATA_LAKE_PATH": str(afile), "EMPLOYEE_BADGE_LOGS_URL": "http://127.0.0.1:9/x/"}
    out = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DATA_LAKE_PATH=") and "directory" in lines[0]
    assert afile.read_text() == "not a lake\n"
