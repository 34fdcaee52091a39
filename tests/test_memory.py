"""utils.memory: the compactor and dashboard processes start with Arrow's jemalloc pool, unless the user chose one;
the compactor limits glibc's malloc arenas."""

from __future__ import annotations

import os
import subprocess

import pytest

from testkit.processes import PYTHON, ROOT
from utils.memory import POOL_ENV, with_preferred_pool

# What compaction_monitoring.py does first, then the pool pyarrow (imported after it) uses.
PROBE = "import compaction_monitoring, pyarrow as pa; print(pa.default_memory_pool().backend_name)"


def _pool_of_the_compactor(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != POOL_ENV}
    done = subprocess.run(
        [PYTHON, "-c", PROBE], env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_compactor_process_uses_jemalloc() -> None:
    assert _pool_of_the_compactor() == "jemalloc"  # pyarrow's Linux wheels carry it


# What `streamlit run analytics_app.py` does (the page itself replaced by a stand-in), then pyarrow's pool.
DASHBOARD_PROBE = (
    "import sys, types; sys.modules['analytics.dashboard'] = types.SimpleNamespace(main=lambda: None); "
    "import analytics_app, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
)


@pytest.mark.parametrize(("chosen", "expected"), [("", "jemalloc"), ("system", "system")])
def test_the_dashboard_process_uses_jemalloc_unless_told_otherwise(chosen: str, expected: str) -> None:
    base = {k: v for k, v in os.environ.items() if k != POOL_ENV}
    env = {**base, POOL_ENV: chosen} if chosen else base
    done = subprocess.run(
        [PYTHON, "-c", DASHBOARD_PROBE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


@pytest.mark.parametrize("chosen", ["system", "mimalloc"])
def test_a_pool_the_user_chose_is_kept(chosen: str) -> None:
    assert _pool_of_the_compactor(**{POOL_ENV: chosen}) == chosen
    assert with_preferred_pool({POOL_ENV: chosen, "X": "1"}) == {POOL_ENV: chosen, "X": "1"}


def test_an_empty_choice_is_no_choice() -> None:
    assert with_preferred_pool({POOL_ENV: ""}) == {POOL_ENV: "jemalloc"}
    assert with_preferred_pool({}) == {POOL_ENV: "jemalloc"}


def test_the_malloc_arenas_are_limited_where_the_c_library_is_glibc() -> None:
    # glibc's mallopt() answers 1 when it took the setting; this machine's C library is glibc (Debian)
    probe = "from utils.memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    done = subprocess.run([PYTHON, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
