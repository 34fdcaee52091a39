"""Typed settings, read once from the environment and ``.env``, declared as one pydantic-settings model.

Every value is validated before anything starts: a bad one raises :class:`~utils.errors.ConfigError`, one
line naming the first bad variable, its value and what is allowed. No module reads the environment on
import: entry points call :func:`get_settings` (cached); tests use :func:`load_settings` or :meth:`Settings.replace`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self, get_args, get_origin

import annotated_types
from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from utils.errors import ConfigError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_S3_URL = re.compile(r"^[sS]3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^?#]*)?$")  # s3://bucket[/prefix]
LAKE_ALLOWED = "a local directory, or s3://bucket/prefix for S3-compatible object storage"


def _path(value: Any) -> Any:
    text = str(value).strip()
    if not text:  # Path("") would silently be the current directory
        raise ValueError("empty path")
    if _S3_URL.match(text):
        return text  # the lake on S3-compatible object storage, kept as written (lake.location)
    if _URL.match(text):  # Path("gs://b/p") would silently be the local directory gs:/b/p
        # A ConfigError passes through pydantic as it is (only ValueError is wrapped): its words reach the user.
        raise ConfigError("DATA_LAKE_PATH", text, LAKE_ALLOWED)
    return Path(text).expanduser()


LakePath = Annotated[Path | str, BeforeValidator(_path)]  # str: an s3:// URL
BlankIsNone = Annotated[str | None, BeforeValidator(lambda v: (v.strip() if isinstance(v, str) else v) or None)]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(lambda v: str(v).strip().upper())]


class Settings(BaseSettings):
    """Every setting, validated. Build with :func:`load_settings`; derive variants with :meth:`replace`."""

    model_config = SettingsConfigDict(
        alias_generator=str.upper,  # field batch_size is the variable BATCH_SIZE, spelled exactly so
        case_sensitive=True,
        extra="ignore",
        frozen=True,
        str_strip_whitespace=True,
        str_min_length=1,
        allow_inf_nan=False,
    )

    data_lake_path: LakePath = Field(Path("./data_lake"), description="root of the lake, its Delta table")
    employee_badge_logs_url: str = Field(
        "http://127.0.0.1:8000/employee-badge-logs/", description="the generator service's endpoint the pipeline reads"
    )
    batch_size: int = Field(100_000, ge=1, le=100_000, description="records asked for per request")
    poll_interval_seconds: float = Field(
        1.0, ge=0, description="pause after a request that returned less than a full batch"
    )
    buffer_records: int = Field(100_000, ge=1, le=10_000_000, description="flush when this many records are buffered")
    flush_interval_seconds: float = Field(
        1.0, ge=0.05, le=5, description="flush at the latest this long after the oldest buffered record arrived"
    )
    compaction_min_files: int = Field(
        100, ge=2, le=100_000, description="compact once landing/ holds at least this many files"
    )
    compaction_target_min_mb: int = Field(
        100, ge=1, le=100_000, description="compacted files below this size are merged again"
    )
    compaction_target_max_mb: int = Field(500, ge=1, le=100_000, description="no compacted file grows beyond this size")
    compaction_grace_seconds: float = Field(
        30.0, ge=0, le=86_400, description="replaced files are deleted only after this long"
    )
    compaction_sweep_seconds: float = Field(30.0, ge=0.1, le=86_400, description="periodic check besides file events")
    compaction_debounce_seconds: float = Field(
        1.0, ge=0, le=3_600, description="quiet time after a burst of file events"
    )
    compaction_aggregates: bool = Field(
        True, description="the compactor persists the dashboard's pre-aggregates of each compacted file"
    )
    retention_days: int = Field(
        0, ge=0, le=36_500, description="events dated before this many days ago leave the lake; 0 = keep forever"
    )
    generator_seed: int = Field(42, ge=0, le=2**63 - 1, description="the synthetic stream's seed")
    events_per_second: float = Field(
        200.0, ge=0, le=1e9, description="the live stream's average rate; 0 = unlimited firehose"
    )
    generator_stream_start: BlankIsNone = Field(
        None,
        description="ISO-8601 UTC instant the stream starts at; empty = remembered per lake (see api/generators.py)",
    )
    record_version: int = Field(
        1, ge=1, le=2, description="record version the service sends unless a request asks: 2 adds door_id"
    )
    retry_max_attempts: int = Field(5, ge=1, le=100, description="client attempts per request before giving up")
    retry_backoff_base: float = Field(3.0, ge=1, le=100, description="retry delay is about base**attempt seconds")
    retry_max_delay_seconds: float = Field(60.0, ge=0, le=3_600, description="cap on one retry delay")
    request_timeout_seconds: float = Field(10.0, ge=0.01, le=3_600, description="timeout of one request")
    max_response_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        le=4 * 1024**3,
        description="the client refuses (and retries) a response body larger than this many bytes",
    )
    api_fault_rate: float = Field(0.0, ge=0, le=1, description="share of responses the service fails on purpose")
    api_max_large_requests: int = Field(
        4,
        ge=0,
        le=10_000,
        description="the service answers 503 beyond this many requests of batch > 10000 in flight; 0 = never",
    )
    api_host: str = Field("127.0.0.1", description="interface the generator service binds")
    api_port: int = Field(8000, ge=1, le=65_535, description="port of the generator service")
    dashboard_port: int = Field(8501, ge=1, le=65_535, description="port of the Streamlit dashboard")
    dashboard_memory_mb: int = Field(
        512, ge=64, le=1_048_576, description="memory limit of the dashboard's DuckDB (MB); the rest is the page's"
    )
    progress_interval_seconds: float = Field(
        5.0, ge=0.1, le=3_600, description="pipeline progress line every this long"
    )
    log_level: LogLevel = Field("INFO", description="logging level")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings hands in the environment (os.environ, or a test's own mapping) as init values,
        # so a test's mapping is the whole environment; .env fills in below it.
        return init_settings, dotenv_settings

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        # ConfigError is not a ValueError, so pydantic lets it through as it is.
        if self.compaction_target_max_mb < self.compaction_target_min_mb:
            raise ConfigError(
                "COMPACTION_TARGET_MAX_MB", self.compaction_target_max_mb, "must be >= COMPACTION_TARGET_MIN_MB"
            )
        if not self.employee_badge_logs_url.startswith(("http://", "https://")):
            raise ConfigError("EMPLOYEE_BADGE_LOGS_URL", self.employee_badge_logs_url, "an http:// or https:// URL")
        if isinstance(self.data_lake_path, Path) and not _may_be_a_directory(self.data_lake_path):
            path = str(self.data_lake_path)
            raise ConfigError("DATA_LAKE_PATH", path, "a directory, or a path that does not exist yet")
        return self

    def local_lake_path(self, role: str) -> Path:
        """The lake's directory, for a ``role`` that runs on a local lake only so far.

        Raises ConfigError (exit status 2, one line) for an ``s3://`` lake, naming the role.
        """
        if isinstance(self.data_lake_path, Path):
            return self.data_lake_path
        raise ConfigError(
            "DATA_LAKE_PATH", self.data_lake_path, f"a local directory: {role} does not run on object storage yet"
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated like environment values."""
        changed = {key.upper(): _unparse(value) for key, value in changes.items()}
        return load_settings({**self.as_env(), **changed}, env_file=None)

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, for starting child processes with the same view."""
        return {name: _unparse(value) for name, value in self.model_dump(by_alias=True).items()}

    @property
    def compaction_target_min_bytes(self) -> int:
        return self.compaction_target_min_mb * 1024 * 1024

    @property
    def compaction_target_max_bytes(self) -> int:
        return self.compaction_target_max_mb * 1024 * 1024


def _may_be_a_directory(path: Path) -> bool:
    """True if ``path`` is a directory, or does not exist and its nearest existing ancestor is one."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir()
    return True  # nothing exists up to the root of a relative path: the current directory is one


def _unparse(value: Any) -> str:
    return "" if value is None else str(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_NOUNS: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    Path: "a path",
    Path | str: LAKE_ALLOWED,
}


def _allowed(field: FieldInfo) -> str:
    """What a variable accepts, in words, from the field's type and bounds."""
    if get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(get_args(field.annotation))
    noun = _NOUNS.get(field.annotation, "a string")
    ge: Any = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    le: Any = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    if ge is not None and le is not None:
        return f"{noun} from {_fmt(ge)} to {_fmt(le)}"
    return noun if ge is None else f"{noun} >= {_fmt(ge)}"


class Variable(NamedTuple):
    """One environment variable as :class:`Settings` declares it: for docs, tests and error messages."""

    name: str
    field: str
    help: str
    allowed: str


SPECS: tuple[Variable, ...] = tuple(
    Variable(str(field.alias), name, field.description or "", _allowed(field))
    for name, field in Settings.model_fields.items()
)
_BY_NAME = {v.name: v for v in SPECS}


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | Path | None = ".env",
) -> Settings:
    """Validate every setting; values in ``environ`` (default ``os.environ``) win over ``env_file``.

    Raises ConfigError naming the first invalid variable; never returns a half-valid object.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {name: environ[name] for name in _BY_NAME if name in environ}
    try:
        # mypy's view of __init__ holds the fields only, not BaseSettings' options such as _env_file
        return Settings(_env_file=env_file, **values)  # type: ignore[call-arg]
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = _BY_NAME[str(first["loc"][0])]
        raise ConfigError(variable.name, first["input"], variable.allowed) from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded once from the environment and ``.env``."""
    return load_settings()


def settings_fields() -> tuple[str, ...]:
    """Names of the model's fields (one per variable), for tests and docs."""
    return tuple(Settings.model_fields)
