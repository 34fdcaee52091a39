from __future__ import annotations

from pathlib import Path

import pytest

from utils.config import SPECS, load_settings
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
