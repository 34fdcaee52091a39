"""The Arrow memory pool of the compactor and the dashboard: jemalloc.

pyarrow's wheels default to mimalloc, which keeps freed pages mapped: a process that streams gigabytes
through short-lived Arrow buffers (the compactor) sees its resident set creep up over a run. jemalloc,
built into pyarrow's Linux and macOS wheels, returns freed pages to the system after a short decay.
Measured with ``make bench`` (compaction of 90 M rows in 900 files, same run): peak RSS 290 MB with
mimalloc, 228 MB with jemalloc, at the same rows/s. The dashboard, reading a compacted lake's many small
aggregates files on its first refresh, showed the same: 370 MB with mimalloc, 250 MB with jemalloc, for
the same 20 files read (``make bench-scale`` runs its dashboard process with it too).

Arrow reads its setting, ``ARROW_DEFAULT_MEMORY_POOL``, once, when pyarrow is imported, and its C++
readers and writers use that pool whatever Python sets later: so the choice is made in the environment
of a process before it starts (or at the very top of its entry point).

The compactor's other allocations (numpy's, for the aggregates of each output, in a thread beside the
writing) come from the C library's malloc. glibc gives each new thread an arena of its own and hardly
ever returns an arena's free pages: measured with the compaction benchmark, peak RSS 1,000 MB with the
default arenas, 514 MB with one (:func:`limit_malloc_arenas`), at the same rows/s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping
from typing import Final

POOL_ENV: Final = "ARROW_DEFAULT_MEMORY_POOL"  # Arrow's own setting
PREFERRED_POOL: Final = "jemalloc"


def with_preferred_pool(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with Arrow's pool set to jemalloc, unless ``env`` chose one already (a user's choice is kept)."""
    return {**env, POOL_ENV: env.get(POOL_ENV) or PREFERRED_POOL}


M_ARENA_MAX: Final = -8  # glibc's mallopt() parameter (malloc.h)


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Have glibc's malloc use at most ``arenas`` arenas in this process (call it before starting threads).

    Returns whether it applied: False where the C library is not glibc (nothing to do there).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
