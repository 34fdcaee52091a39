"""``python -m lake stats|verify [--json]``: look into a lake from the command line.

``verify`` exits 0 only if the lake is whole (see :func:`lake.audit.verify`), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lake.audit import stats, verify
from lake.storage import LocalStorage
from processes.cli import EXIT_ERROR, EXIT_OK, run_main
from utils.config import get_settings


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _print_stats(data: dict[str, Any]) -> None:
    print(f"lake: {data['lake']}")
    print(f"{'zone':<12}{'files':>8}{'rows':>14}{'bytes':>12}")
    for zone, z in data["zones"].items():
        print(f"{zone:<12}{z['files']:>8}{z['rows']:>14,}{_human_bytes(z['bytes']):>12}")
    live = data["live"]
    print(f"{'live set':<12}{live['files']:>8}{live['rows']:>14,}{_human_bytes(live['bytes']):>12}")
    print(f"max event id: {live['max_event_id']}")
    if live["replaced_files_pending_deletion"]:
        print(f"replaced files awaiting deletion: {live['replaced_files_pending_deletion']}")
    if live["invalid_files"]:
        print(f"unreadable or foreign files left out: {', '.join(live['invalid_files'])}")
    if data["newest_event_time"]:
        print(f"newest event: {data['newest_event_time']} (freshness lag {data['freshness_lag_seconds']:.1f} s)")
    else:
        print("newest event: none yet (the lake is empty; start `python pipeline.py`)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lake", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("stats", "files, rows, bytes per zone; freshness"), ("verify", "check exactly-once")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    def run() -> int:
        settings = get_settings()
        storage = LocalStorage(settings.data_lake_path)
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
            verdict = "OK" if report.ok else "FAILED"
            print(
                f"verify {verdict}: {report.live_rows:,} live rows, {report.quarantined_rows:,} quarantined, "
                f"max event id {report.max_event_id}, {report.files_checked} files checked"
            )
            for problem in report.problems:
                print(f"  problem: {problem}")
            for note in report.notes:
                print(f"  note: {note}")
        return EXIT_OK if report.ok else EXIT_ERROR

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
