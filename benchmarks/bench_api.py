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
* **service under concurrent load** (api/shedding.py): a fresh service process takes 200 concurrent
  ``batch=100000`` JSON requests at once (loopback, one attempt each, bounded by a deadline); its peak
  RSS (``VmHWM``) and the share of 503s with ``Retry-After``. Reference: the same service with shedding
  off under 48 such requests (the issue's reproduction: 2,270 MB), measured in the same run. Target:
  peak RSS under 1 GB.

``python -m benchmarks.bench_api [--size quick|full]`` prints a table; :func:`run` returns the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from api.generators import generate_table
from api.main import create_app
from api.shedding import MAX_LARGE_REQUESTS
from benchmarks.suite import fmt, repeat
from source.client import BadgeLogClient, read_body
from testkit.processes import ManagedProcess, free_port, http_ok, running_service, wait_until
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
LOAD_CLIENTS = 200  # concurrent batch=100,000 JSON requests against the shedding service
UNSHED_CLIENTS = 48  # the same against a service that never sheds: the issue's reproduction (safe on 24 GB)
LOAD_DEADLINE_SECONDS = 60.0  # a load run stops by itself after this long, answered or not
RSS_BOUND_MB = 1024  # the shedding service's peak RSS under LOAD_CLIENTS stays below this
ISSUE_UNSHED_MB = 2270  # issue 12: 48 concurrent batch=100000 JSON requests, before shedding

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


def unlimited_service() -> FastAPI:
    """``uvicorn --factory benchmarks.bench_api:unlimited_service``: the service with shedding off."""
    return create_app(max_large_requests=None)


@contextlib.contextmanager
def unshed_service(settings: Settings, log: Path) -> Iterator[ManagedProcess]:
    """Like :func:`running_service`, but the app never sheds load (the reference for the load rows)."""
    port = settings.api_port
    args = [str(BIN / "uvicorn"), "--factory", "benchmarks.bench_api:unlimited_service"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with ManagedProcess(args, env=settings.as_env(), log_path=log) as proc:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health/"), 60, what="the unshed service")
        yield proc


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def _burst(url: str, clients: int) -> Counter[str]:
    """``clients`` concurrent JSON GETs of BATCH records, one attempt each; bodies are read and dropped."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    timeout = httpx.Timeout(LOAD_DEADLINE_SECONDS, pool=LOAD_DEADLINE_SECONDS)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:

        async def one(i: int) -> str:
            try:
                async with http.stream("GET", url, params={"batch": BATCH, "cursor": i * BATCH}) as r:
                    async for _ in r.aiter_bytes():
                        pass
            except httpx.HTTPError:
                return "failed"
            if r.status_code == 503 and r.headers.get("Retry-After"):
                return "shed"
            return "served" if r.status_code == 200 else f"HTTP {r.status_code}"

        tasks = [asyncio.create_task(one(i)) for i in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=LOAD_DEADLINE_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return Counter([t.result() for t in done] + ["unanswered"] * len(pending))


def load(url: str, pid: int, clients: int) -> dict[str, Any]:
    """The service's peak RSS and answers under ``clients`` concurrent large requests."""
    started = time.perf_counter()
    answers = asyncio.run(_burst(url, clients))
    return {
        "peak_mb": peak_rss_mb(pid),
        "answers": ", ".join(f"{kind} {n}" for kind, n in sorted(answers.items())),
        "kinds": set(answers),
        "shed_rate": answers["shed"] / clients,
        "seconds": time.perf_counter() - started,
    }


def load_rows(settings: Settings, tmp: Path) -> list[Row]:
    """The load figures: the shedding service under LOAD_CLIENTS, the unshed one under UNSHED_CLIENTS."""
    url = f"http://127.0.0.1:{settings.api_port}/employee-badge-logs/"
    with running_service(settings.as_env(), settings.api_port, tmp / "api-load.log") as proc:
        shed = load(url, proc.pid, LOAD_CLIENTS)
    with unshed_service(settings, tmp / "api-unshed.log") as proc:
        unshed = load(url, proc.pid, UNSHED_CLIENTS)
    only = {"served", "shed"}
    common = {"runs": 1, "original": None}
    return [
        {
            "figure": f"service peak RSS, {LOAD_CLIENTS} concurrent batch 100,000 JSON, "
            f"shedding beyond {MAX_LARGE_REQUESTS} large in flight ({shed['answers']})",
            "value": shed["peak_mb"],
            "unit": "MB",
            "reference": f"shedding off, {UNSHED_CLIENTS} concurrent",
            "reference_value": unshed["peak_mb"],
            "ratio": shed["peak_mb"] / unshed["peak_mb"],
            "target": f"< {RSS_BOUND_MB:,}",
            "ok": shed["peak_mb"] < RSS_BOUND_MB and shed["kinds"] <= only,
            **common,
        },
        {
            "figure": f"service shed rate, the same {LOAD_CLIENTS} requests (503 + Retry-After)",
            "value": shed["shed_rate"],
            "unit": "share of requests",
            "reference": f"shedding off, {UNSHED_CLIENTS} concurrent",
            "reference_value": unshed["shed_rate"],
            "ratio": None,
            "target": "",
            "ok": None,
            **common,
        },
        {
            "figure": f"service peak RSS, {UNSHED_CLIENTS} concurrent batch 100,000 JSON, shedding off "
            f"({unshed['answers']})",
            "value": unshed["peak_mb"],
            "unit": "MB",
            "reference": "issue 12 on main",
            "reference_value": ISSUE_UNSHED_MB,
            "ratio": unshed["peak_mb"] / ISSUE_UNSHED_MB,
            "target": "",
            "ok": None,
            **common,
        },
    ]


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
        rows.extend(load_rows(settings, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_api", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    args = parser.parse_args(argv)
    rows = run(args.size)
    header = ("figure", "value (min-max)", "unit", "reference", "ratio", "original", "target", "met")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        spread = f" ({fmt(r['min'])}-{fmt(r['max'])})" if r.get("min") is not None else ""
        cells = (
            r["figure"],
            f"{fmt(r['value'])}{spread}",
            r["unit"],
            f"{r['reference']}: {fmt(r['reference_value'])}",
            "-" if r["ratio"] is None else f"{r['ratio']:,.2f}x",
            fmt(r["original"]),
            r["target"] or "-",
            fmt(r["ok"]),
        )
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
