"""Generator and service benchmark: records/s generated in-process and served over loopback (JSON, Arrow).

Each figure sits beside a reference measured in the same run and the original's figure (docs/original.md):

* **generation in-process**: :func:`api.generators.generate_table` for batches of 100,000 records.
  Reference: a straightforward per-record Python generator (a dict per record, ``uuid4()`` each, the
  original's way), 20,000 records. Original: 112,000 rec/s.
* **served JSON / Arrow over loopback**: ``GET /employee-badge-logs/?batch=100000&cursor=…`` against a
  real ``uvicorn api.main:app`` (firehose, its own process) on 127.0.0.1, body read whole by httpx.
  Reference: the original's serving path in-process, without HTTP (per-record dicts, FastAPI's
  ``jsonable_encoder``, ``json.dumps``), an upper bound for it. Original: 27,600 rec/s (JSON only).
* **client fetch + validate** (Arrow, JSON): :class:`source.client.BadgeLogClient` end to end, what the
  pipeline gets per second from one connection. Reference: the served figure of the same format.

``python -m benchmarks.bench_api [--size quick|full]`` prints a table; :func:`run` returns the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from api.generators import generate_table
from benchmarks.suite import fmt, repeat
from source.client import BadgeLogClient, read_body
from testkit.processes import free_port, running_service
from utils.config import Settings, load_settings
from utils.protocol import ARROW_MEDIA_TYPE
from utils.records import BUILDINGS, DEPARTMENT_WEIGHTS

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
BIN = Path(sys.executable).parent
BATCH = 100_000
SEED = 42
STREAM_START = datetime(2025, 3, 3, tzinfo=UTC)

SIZES: dict[str, dict[str, int]] = {
    "quick": {"runs": 3, "requests": 2, "reference": 5_000},
    "full": {"runs": 7, "requests": 5, "reference": 20_000},
}
TARGETS = {"generation": 5_000_000, "json": 1_000_000, "arrow": 5_000_000}
ORIGINAL = {"generation": 112_000, "json": 27_600}  # docs/original.md

Row = dict[str, Any]


def reference_records(n: int) -> list[dict[str, Any]]:
    """The original's way: a Python dict per record, a fresh uuid4 each."""
    depts, weights = list(DEPARTMENT_WEIGHTS), list(DEPARTMENT_WEIGHTS.values())
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        badge_in = now - timedelta(seconds=random.uniform(0, 36_000))
        granted = random.random() > 1 / 51
        out.append(
            {
                "event_id": i,
                "user_id": str(uuid.uuid4()),
                "dept": random.choices(depts, weights)[0],
                "building_location": random.choice(BUILDINGS),
                "badge_in_timestamp": badge_in,
                "badge_out_timestamp": badge_in + timedelta(seconds=random.uniform(0, 36_000)) if granted else badge_in,
                "access_granted": granted,
            }
        )
    return out


def reference_generation_rate(n: int) -> float:
    start = time.perf_counter()
    reference_records(n)
    return n / (time.perf_counter() - start)


def reference_serving_rate(n: int) -> float:
    """Per-record dicts through jsonable_encoder and json.dumps, as the original's endpoint did (no HTTP)."""
    from fastapi.encoders import jsonable_encoder

    start = time.perf_counter()
    json.dumps(jsonable_encoder(reference_records(n))).encode()
    return n / (time.perf_counter() - start)


def generation_rate(requests: int, offset: list[int]) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        generate_table(SEED, offset[0], BATCH, stream_start=STREAM_START, events_per_second=0)
        offset[0] += BATCH
    return requests * BATCH / (time.perf_counter() - start)


def served_rate(http: httpx.Client, url: str, arrow: bool, requests: int, offset: list[int]) -> float:
    """Records/s for whole-body GETs of BATCH records, read as the client reads them (no decoding)."""
    headers = {"Accept": ARROW_MEDIA_TYPE} if arrow else {}
    start = time.perf_counter()
    for _ in range(requests):
        with http.stream("GET", url, params={"batch": BATCH, "cursor": offset[0]}, headers=headers) as r:
            r.raise_for_status()
            read_body(r)
        offset[0] += BATCH
    return requests * BATCH / (time.perf_counter() - start)


def client_rate(client: BadgeLogClient, requests: int, offset: list[int]) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        result = client.get_employee_badge_logs(cursor=offset[0], batch=BATCH)
        assert result.count == BATCH
        offset[0] = result.next_cursor
    return requests * BATCH / (time.perf_counter() - start)


def client_stats(settings: Settings, arrow: bool, requests: int, offset: list[int], runs: int) -> dict[str, float]:
    with BadgeLogClient(settings, prefer_arrow=arrow) as client:
        return repeat(lambda: client_rate(client, requests, offset), runs)


@contextlib.contextmanager
def service(settings: Settings, log: Path) -> Iterator[str]:
    """A real ``uvicorn api.main:app`` in its own process on a free loopback port; yields the endpoint URL."""
    with running_service(settings.as_env(), settings.api_port, log):
        yield f"http://127.0.0.1:{settings.api_port}/employee-badge-logs/"


def row(figure: str, stats: dict[str, float], reference: str, reference_value: float, target: int | None) -> Row:
    return {
        "figure": figure,
        **stats,
        "unit": "records/s",
        "reference": reference,
        "reference_value": reference_value,
        "ratio": stats["value"] / reference_value,
        "target": f">= {target:,}" if target else "",
        "ok": None if target is None else stats["value"] >= target,
    }


def run(size: str = "full") -> list[Row]:
    """Measure every figure; ``size="quick"`` is a smoke run."""
    cfg = SIZES[size]
    runs, requests, ref_n = cfg["runs"], cfg["requests"], cfg["reference"]
    rows: list[Row] = []

    ref_gen = repeat(lambda: reference_generation_rate(ref_n), runs)["value"]
    ref_serve = repeat(lambda: reference_serving_rate(ref_n), runs)["value"]
    gen_offset = [0]
    gen = repeat(lambda: generation_rate(requests, gen_offset), runs)
    rows.append(
        {
            **row(
                "generation in-process, batch 100,000", gen, "per-record dicts + uuid4", ref_gen, TARGETS["generation"]
            ),
            "original": ORIGINAL["generation"],
        }
    )

    WORK.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-", dir=WORK))
    try:
        port = free_port()
        settings = load_settings(
            {
                "DATA_LAKE_PATH": str(tmp / "lake"),
                "EMPLOYEE_BADGE_LOGS_URL": f"http://127.0.0.1:{port}/employee-badge-logs/",
                "API_PORT": str(port),
                "GENERATOR_SEED": str(SEED),
                "EVENTS_PER_SECOND": "0",
                "GENERATOR_STREAM_START": STREAM_START.isoformat(),
                "REQUEST_TIMEOUT_SECONDS": "60",
                "LOG_LEVEL": "WARNING",
            },
            env_file=None,
        )
        with service(settings, tmp / "api.log") as url, httpx.Client(timeout=60) as http:
            offset = [0]
            served_json = repeat(lambda: served_rate(http, url, False, requests, offset), runs)
            served_arrow = repeat(lambda: served_rate(http, url, True, requests, offset), runs)
            rows.append(
                {
                    **row(
                        "served JSON over loopback, batch 100,000",
                        served_json,
                        "in-process generation (the ceiling)",
                        gen["value"],
                        TARGETS["json"],
                    ),
                    "original": ORIGINAL["json"],
                }
            )
            rows.append(
                {
                    **row(
                        "served JSON over loopback, against the original's encoding",
                        served_json,
                        "per-record dicts + jsonable_encoder (no HTTP)",
                        ref_serve,
                        None,
                    ),
                    "original": ORIGINAL["json"],
                }
            )
            rows.append(
                {
                    **row(
                        "served Arrow over loopback, batch 100,000",
                        served_arrow,
                        "in-process generation (the ceiling)",
                        gen["value"],
                        TARGETS["arrow"],
                    ),
                    "original": None,
                }
            )
            for arrow, served in ((True, served_arrow), (False, served_json)):
                name = "Arrow" if arrow else "JSON"
                stats = client_stats(settings, arrow, requests, offset, runs)
                rows.append(
                    {
                        **row(f"client fetch + validate, {name}", stats, f"served {name}", served["value"], None),
                        "original": None,
                    }
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_api", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    args = parser.parse_args(argv)
    rows = run(args.size)
    header = ("figure", "records/s (min-max)", "reference", "ratio", "original", "target", "met")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        cells = (
            r["figure"],
            f"{fmt(r['value'])} ({fmt(r['min'])}-{fmt(r['max'])})",
            f"{r['reference']}: {fmt(r['reference_value'])}",
            f"{r['ratio']:,.1f}x",
            fmt(r["original"]),
            r["target"] or "-",
            fmt(r["ok"]),
        )
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
