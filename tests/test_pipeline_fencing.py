"""Two pipelines on one table: the OS lock bypassed (as a zombie on a shared file system would), the table fences.

Each pipeline is a real process running :func:`processes.pipeline.run` with the lock replaced by a no-op and
the same deterministic in-memory source; the table's ``txn`` is all that stands between them.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import numpy as np

from lake.storage import LocalStorage
from lake.table import read_snapshot
from testkit.ids import assert_exactly_once, live_ids
from testkit.processes import PYTHON, ManagedProcess, wait_until

# One pipeline process: ``lake``, the source's delay per request (seconds), the flush size.
PIPELINE_WITHOUT_LOCK = textwrap.dedent(
    """
    import contextlib, sys, time
    from pathlib import Path
    from processes import pipeline
    from processes.cli import run_main, setup_logging
    from testkit.fake_source import FakeSource
    from testkit.processes import make_settings

    class NoLock(contextlib.nullcontext):  # the pipeline lock bypassed: only the table can tell the two apart
        def __init__(self, *args, **kwargs):
            super().__init__()

    pipeline.LakeLock = NoLock
    lake, delay, size = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    source = FakeSource(on_call=lambda n: time.sleep(delay))
    settings = make_settings(lake, BATCH_SIZE=size, BUFFER_RECORDS=size, FLUSH_INTERVAL_SECONDS=0.2)
    setup_logging("INFO", "pipeline")
    options = pipeline.RunOptions(compaction=False)
    sys.exit(run_main(lambda: pipeline.run(settings, options, source=source)))
    """
)


def pipeline_process(lake: Path, delay: float, log: Path) -> ManagedProcess:
    return ManagedProcess([PYTHON, "-c", PIPELINE_WITHOUT_LOCK, str(lake), str(delay), "50"], log_path=log)


def position(storage: LocalStorage) -> int:
    committed = read_snapshot(storage).committed_event_id
    return -1 if committed is None else committed


def test_the_second_pipeline_is_fenced_and_every_id_is_committed_once(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    storage = LocalStorage(lake)
    with pipeline_process(lake, 0.01, tmp_path / "first.log") as first:
        wait_until(lambda: position(storage) >= 500, 60, what="the first pipeline's commits")
        # The second starts from the position it reads, and fetches the same records the first is fetching.
        with pipeline_process(lake, 0.3, tmp_path / "second.log") as second:
            status = second.wait(60)
            out = second.output()
        assert status == 1, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "another" in errors[0] and "pipeline" in errors[0], out[-3000:]
        assert "resuming at event" in out  # it did start, and only its commit was refused
        assert first.proc is not None and first.proc.poll() is None  # the first goes on
        progressed = position(storage)
        wait_until(lambda: position(storage) > progressed, 30, what="the first pipeline to go on committing")
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.output()[-3000:]
    last = position(storage)
    assert_exactly_once(storage, range(last + 1))  # nothing twice, nothing missing, up to the position
    ids = live_ids(storage)
    assert len(ids) == len(np.unique(ids))
