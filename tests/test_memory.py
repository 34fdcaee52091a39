"""utils.memory: the compactor's Arrow memory pool (jemalloc, unless the user chose one)."""

from __future__ import annotations

import os
import subprocess

import pytest

from testkit.processes import PYTHON, ROOT
from utils.memory import POOL_ENV

PROBE = (
    "from utils.memory import prefer_jemalloc; import pyarrow as pa; "
    "print(prefer_jemalloc(), pa.default_memory_pool().backend_name)"
)


def _probe(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != POOL_ENV}
    done = subprocess.run(
        [PYTHON, "-c", PROBE], env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_jemalloc_becomes_the_default_pool() -> None:
    assert _probe() == "jemalloc jemalloc"  # pyarrow's Linux wheels carry jemalloc


@pytest.mark.parametrize("chosen", ["system", "mimalloc"])
def test_a_pool_the_user_chose_is_kept(chosen: str) -> None:
    assert _probe(**{POOL_ENV: chosen}) == f"{chosen} {chosen}"
