"""``python -m lake stats|verify|migrate [--json]``: look into a lake, prove it whole, or migrate it.

All three run wherever ``DATA_LAKE_PATH`` puts the lake: a local directory or ``s3://bucket/prefix``.
``stats`` and ``verify`` read the lake's Delta table (see :mod:`lake.audit`). ``verify`` exits 0 only if the
lake is whole, 1 otherwise (a file that could not be read is a failure too, reported as an I/O failure or
as damage, whichever it is). ``migrate`` turns a lake in the previous layout (data files without a
``_delta_log/``, on a local disk or copied key for key into a bucket) into its tables in place
(:func:`lake.migrate.migrate`) and exits 0, also when the lake is migrated already; it exits 3 while
another process holds the lake (a pipeline or compactor lock on a local disk, the compactor's lease on
object storage). On a lake in the previous layout ``stats`` and ``verify`` exit 2 with the one line saying
to run it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lake.audit import stats, verify
from lake.location import is_object_store, open_storage
from lake.objectstore import ObjectStorage
from lake.storage import Storage
from processes.cli import EXIT_ERROR, EXIT_OK, run_main
from utils.config import Settings, get_settings
from utils.errors import LakeError, one_line


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _print_stats(data: dict[str, Any]) -> None:
    table = data["table"]
    print(f"lake: {data['lake']}")
    if table["version"] is None:
        print("table: none yet (the lake is empty; start `python pipeline.py`)")
    else:
        print(
            f"table: version {table['version']}, {table['log_entries']} log entries, "
            f"{table['checkpoints']} checkpoint(s); pipeline position {table['committed_event_id']}"
        )
    print(f"{'zone':<14}{'files':>8}{'rows':>14}{'bytes':>12}")
    for zone, z in data["zones"].items():
        print(f"{zone:<14}{z['files']:>8}{z['rows']:>14,}{_human_bytes(z['bytes']):>12}")
    print(f"{'in the table':<14}{table['files']:>8}{table['rows']:>14,}{_human_bytes(table['bytes']):>12}")
    print(f"max event id: {table['max_event_id']}")
    beside = data["not_in_table"]
    if beside["files"]:
        where = "in the bucket" if is_object_store(data["lake"]) else "on disk"
        print(
            f"files {where} not in the table (awaiting clean-up after the grace period): {beside['files']} "
            f"({_human_bytes(beside['bytes'])})"
        )
    if data["newest_event_time"]:
        print(f"newest event: {data['newest_event_time']} (freshness lag {data['freshness_lag_seconds']:.1f} s)")
    else:
        print("newest event: none yet")


def _print_verify(report: dict[str, Any]) -> None:
    verdict = "OK" if report["ok"] else "FAILED"
    print(
        f"verify {verdict}: table version {report['version']}, ids 0..{report['committed_event_id']}: "
        f"{report['table_rows']:,} rows in the table, {report['quarantined_rows']:,} quarantined, "
        f"{report['files_checked']} files checked"
    )
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    for note in report["notes"]:
        print(f"  note: {note}")


def _migrate(storage: Storage, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: only this command needs the previous layout's reader.
    from lake.migrate import legacy_identity, migrate

    identity = legacy_identity(
        storage,
        settings.generator_seed if args.seed is None else args.seed,
        settings.events_per_second if args.events_per_second is None else args.events_per_second,
        args.stream_start or settings.generator_stream_start,
    )
    return migrate(storage, identity)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lake", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("stats", "files, rows, bytes per zone from the table's log; the log; freshness"),
        ("verify", "prove every event id is in the table or quarantine exactly once; check every file"),
        ("migrate", "turn a lake in the previous layout into its Delta tables, in place"),
    )
    for name, text in commands:
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "migrate":
            p.add_argument("--seed", type=int, help="the stream's seed (default: GENERATOR_SEED)")
            p.add_argument(
                "--events-per-second",
                type=float,
                help="the stream's timeline rate (default: EVENTS_PER_SECOND; for a firehose lake, the nominal rate)",
            )
            p.add_argument("--stream-start", help="the stream's start, ISO-8601 UTC (default: GENERATOR_STREAM_START)")
    args = parser.parse_args(argv)

    def run() -> int:
        settings = get_settings()
        storage = open_storage(settings.data_lake_path)
        try:
            if args.command == "migrate":
                result = _migrate(storage, settings, args)
                print(json.dumps(result, indent=2, default=str) if args.json else result["message"])
                return EXIT_OK
            return _inspect(storage, settings, args)
        except LakeError as exc:
            if type(exc) is not LakeError:
                raise
            raise LakeError(one_line(exc, limit=1_000)) from exc  # one line, without a store's debug dump
        finally:
            if isinstance(storage, ObjectStorage):
                storage.close()

    return run_main(run)


def _inspect(storage: Storage, settings: Settings, args: argparse.Namespace) -> int:
    """``stats`` or ``verify`` on ``storage``, printed; the exit status."""
    if args.command == "stats":
        data = stats(storage)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            _print_stats(data)
        return EXIT_OK
    report = verify(storage, settings.compaction_grace_seconds)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_verify(report.as_dict())
    return EXIT_OK if report.ok else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
