"""Typed settings, read once from the environment and ``.env``.

Every variable is declared once in :data:`SPECS` (name, type, default, bounds, one-line meaning);
:func:`load_settings` validates them all and raises :class:`~utils.errors.ConfigError` naming the
first bad one. No module reads the environment on import: entry points call :func:`get_settings`
(cached) and tests build their own with :func:`load_settings` or :meth:`Settings.replace`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from utils.errors import ConfigError


@dataclass(frozen=True)
class Spec:
    """One environment variable: its type, default, bounds and meaning."""

    name: str
    kind: type  # int, float, str or Path
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    optional: bool = False  # an empty value means "not set" (None)

    @property
    def field(self) -> str:
        return self.name.lower()

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        noun = {int: "an integer", float: "a number", str: "a string", Path: "a path"}[self.kind]
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        if self.minimum is not None:
            return f"{noun} >= {_fmt(self.minimum)}"
        return noun


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


SPECS: tuple[Spec, ...] = (
    Spec("DATA_LAKE_PATH", Path, Path("./data_lake"), "root of the Parquet lake"),
    Spec(
        "EMPLOYEE_BADGE_LOGS_URL",
        str,
        "http://127.0.0.1:8000/employee-badge-logs/",
        "the generator service's endpoint the pipeline reads",
    ),
    Spec("BATCH_SIZE", int, 100_000, "records asked for per request", 1, 100_000),
    Spec("POLL_INTERVAL_SECONDS", float, 1.0, "pause after a request that returned less than a full batch", 0),
    Spec("BUFFER_RECORDS", int, 100_000, "flush when this many records are buffered", 1, 10_000_000),
    Spec(
        "FLUSH_INTERVAL_SECONDS",
        float,
        1.0,
        "flush at the latest this long after the oldest buffered record arrived",
        0.05,
        5,
    ),
    Spec("COMPACTION_MIN_FILES", int, 100, "compact once landing/ holds at least this many files", 2, 100_000),
    Spec("COMPACTION_TARGET_MIN_MB", int, 100, "compacted files below this size are merged again", 1, 100_000),
    Spec("COMPACTION_TARGET_MAX_MB", int, 500, "no compacted file grows beyond this size", 1, 100_000),
    Spec("COMPACTION_GRACE_SECONDS", float, 30.0, "replaced files are deleted only after this long", 0, 86_400),
    Spec("COMPACTION_SWEEP_SECONDS", float, 30.0, "periodic check besides file events", 0.1, 86_400),
    Spec("COMPACTION_DEBOUNCE_SECONDS", float, 1.0, "quiet time after a burst of file events", 0, 3_600),
    Spec("GENERATOR_SEED", int, 42, "the synthetic stream's seed", 0, 2**63 - 1),
    Spec("EVENTS_PER_SECOND", float, 200.0, "the live stream's average rate; 0 = unlimited firehose", 0, 1e9),
    Spec(
        "GENERATOR_STREAM_START",
        str,
        None,
        "ISO-8601 UTC instant the stream starts at; empty = remembered per lake (see api/generators.py)",
        optional=True,
    ),
    Spec("RETRY_MAX_ATTEMPTS", int, 5, "client attempts per request before giving up", 1, 100),
    Spec("RETRY_BACKOFF_BASE", float, 3.0, "retry delay is about base**attempt seconds", 1, 100),
    Spec("RETRY_MAX_DELAY_SECONDS", float, 60.0, "cap on one retry delay", 0, 3_600),
    Spec("REQUEST_TIMEOUT_SECONDS", float, 10.0, "timeout of one request", 0.01, 3_600),
    Spec("API_FAULT_RATE", float, 0.0, "share of responses the service fails on purpose", 0, 1),
    Spec("API_HOST", str, "127.0.0.1", "interface the generator service binds"),
    Spec("API_PORT", int, 8000, "port of the generator service", 1, 65_535),
    Spec("DASHBOARD_PORT", int, 8501, "port of the Streamlit dashboard", 1, 65_535),
    Spec("PROGRESS_INTERVAL_SECONDS", float, 5.0, "pipeline progress line every this long", 0.1, 3_600),
    Spec("LOG_LEVEL", str, "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)

SPEC_BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}


@dataclass(frozen=True)
class Settings:
    """Every setting, validated. Build with :func:`load_settings`; derive variants with :meth:`replace`."""

    data_lake_path: Path
    employee_badge_logs_url: str
    batch_size: int
    poll_interval_seconds: float
    buffer_records: int
    flush_interval_seconds: float
    compaction_min_files: int
    compaction_target_min_mb: int
    compaction_target_max_mb: int
    compaction_grace_seconds: float
    compaction_sweep_seconds: float
    compaction_debounce_seconds: float
    generator_seed: int
    events_per_second: float
    generator_stream_start: str | None
    retry_max_attempts: int
    retry_backoff_base: float
    retry_max_delay_seconds: float
    request_timeout_seconds: float
    api_fault_rate: float
    api_host: str
    api_port: int
    dashboard_port: int
    progress_interval_seconds: float
    log_level: str

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated like environment values."""
        raw = {s.name: _unparse(getattr(self, s.field)) for s in SPECS}
        for key, value in changes.items():
            raw[key.upper()] = _unparse(value)
        return load_settings(raw, env_file=None)

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, for starting child processes with the same view."""
        return {s.name: _unparse(getattr(self, s.field)) for s in SPECS}

    @property
    def compaction_target_min_bytes(self) -> int:
        return self.compaction_target_min_mb * 1024 * 1024

    @property
    def compaction_target_max_bytes(self) -> int:
        return self.compaction_target_max_mb * 1024 * 1024


def _unparse(value: Any) -> str:
    return "" if value is None else str(value)


def _parse(spec: Spec, raw: str) -> Any:
    text = raw.strip()
    if text == "":
        if spec.optional:
            return None
        raise ConfigError(spec.name, raw, spec.allowed() + " (it is empty)")
    value: Any
    if spec.kind is int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(spec.name, raw, spec.allowed()) from None
    elif spec.kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(spec.name, raw, spec.allowed()) from None
        if not math.isfinite(value):
            raise ConfigError(spec.name, raw, spec.allowed())
    elif spec.kind is Path:
        value = Path(text).expanduser()
    else:
        value = text
    if spec.choices is not None:
        value = str(value).upper()
        if value not in spec.choices:
            raise ConfigError(spec.name, raw, spec.allowed())
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(spec.name, raw, spec.allowed())
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(spec.name, raw, spec.allowed())
    return value


_CHECKS: tuple[tuple[str, Callable[[Settings], bool], str], ...] = (
    (
        "COMPACTION_TARGET_MAX_MB",
        lambda s: s.compaction_target_max_mb >= s.compaction_target_min_mb,
        "must be >= COMPACTION_TARGET_MIN_MB",
    ),
    (
        "EMPLOYEE_BADGE_LOGS_URL",
        lambda s: s.employee_badge_logs_url.startswith(("http://", "https://")),
        "an http:// or https:// URL",
    ),
)


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | Path | None = ".env",
) -> Settings:
    """Validate every setting; values in ``environ`` (default ``os.environ``) win over ``env_file``.

    Raises ConfigError naming the first invalid variable; never returns a half-valid object.
    """
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for spec in SPECS:
        values[spec.field] = _parse(spec, merged[spec.name]) if spec.name in merged else spec.default
    settings = Settings(**values)
    for name, ok, allowed in _CHECKS:
        if not ok(settings):
            raise ConfigError(name, getattr(settings, name.lower()), allowed)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded once from the environment and ``.env``."""
    return load_settings()


def settings_fields() -> tuple[str, ...]:
    """Names of the dataclass fields (one per variable), for tests and docs."""
    return tuple(f.name for f in dataclasses.fields(Settings))
