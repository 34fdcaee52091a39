"""``make run``: the whole platform in one terminal - service, pipeline (with its compactor), dashboard.

honcho multiplexes the processes' output with a prefix per process and, on Ctrl-C, sends SIGTERM to
every process group (the pipeline flushes what it holds and stops its compactor) and SIGKILL to any
that outlast the wait. Checks that would otherwise fail obscurely (a port in use, a lake locked by
another pipeline, a lake in the previous layout) are made first and reported in one line. With
``--local-s3`` (``make run LAKE=s3``) the lake lives on a local S3 server started first
(:mod:`processes.local_s3`), and every process gets its endpoint and credentials.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path

from dotenv import dotenv_values
from honcho.manager import Manager

from lake import layout
from lake.location import open_storage
from lake.lock import LakeLock
from lake.storage import LocalStorage
from lake.table import ensure_migrated
from processes.cli import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, run_main
from processes.local_s3 import LAKE_URL, environment, local_s3
from utils.config import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
LOCAL_S3_PORT = 9000  # make run LAKE=s3
STOPPED_BY_SIGNAL = {130, 143}  # honcho's return codes after SIGINT / SIGTERM


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def child_environment(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process gets: the validated settings, with the source URL following
    API_HOST/API_PORT unless EMPLOYEE_BADGE_LOGS_URL was set explicitly."""
    environ = dict(os.environ if environ is None else environ)
    env = {**environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    explicit = "EMPLOYEE_BADGE_LOGS_URL" in environ or "EMPLOYEE_BADGE_LOGS_URL" in dotenv_values(ROOT / ".env")
    if not explicit:
        env["EMPLOYEE_BADGE_LOGS_URL"] = f"http://{settings.api_host}:{settings.api_port}/employee-badge-logs/"
    return env


def commands(settings: Settings, python: str = sys.executable) -> dict[str, str]:
    """The shell command of each process (``exec`` so signals reach the program, not a shell)."""
    py = shlex.quote(python)
    host = shlex.quote(settings.api_host)
    return {
        "api": f"exec {py} -m uvicorn api.main:app --host {host} --port {settings.api_port} --no-access-log",
        "pipeline": f"exec {py} pipeline.py",
        "dashboard": (
            f"exec {py} -m streamlit run analytics_app.py --server.headless true "
            f"--server.address 127.0.0.1 --server.port {settings.dashboard_port} "
            "--browser.gatherUsageStats false"
        ),
    }


def serve(settings: Settings, *, s3_port: int | None = None) -> int:
    """Check what would otherwise fail obscurely, then run every process until Ctrl-C (honcho)."""
    ports = [
        ("API_PORT", settings.api_host, settings.api_port),
        ("DASHBOARD_PORT", "127.0.0.1", settings.dashboard_port),
    ]
    if s3_port is not None:
        ports.append(("--local-s3", "127.0.0.1", s3_port))
    for name, host, port in ports:
        if port_in_use(host, port):
            print(f"error: port {port} on {host} is in use ({name}); stop what holds it or set {name}=<free port>")
            return EXIT_CONFIG
    if s3_port is None:
        return _run_all(settings, "")
    with local_s3(s3_port) as endpoint:  # before every other process: the bucket must exist when they start
        os.environ.update(environment(endpoint))
        note = f" (a local S3 server at {endpoint}, in memory: stopping empties it)"
        return _run_all(settings.replace(data_lake_path=LAKE_URL), note)


def _run_all(settings: Settings, note: str) -> int:
    storage = open_storage(settings.data_lake_path)
    # On object storage there is no lock to look at: a second pipeline is fenced by the table's txn.
    local = storage if isinstance(storage, LocalStorage) else None
    if local is not None and LakeLock(local.root, layout.PIPELINE_LOCK, "pipeline").is_locked_elsewhere():
        print(f"error: a pipeline already runs on {local.root}; stop it first")
        return EXIT_LOCKED
    ensure_migrated(storage)  # UnmigratedLakeError: one line, exit 2
    env = child_environment(settings)
    manager = Manager()
    for name, cmd in commands(settings).items():
        manager.add_process(name, cmd, env=env, cwd=str(ROOT))
    url = f"http://127.0.0.1:{settings.dashboard_port}"
    where = local.root.resolve() if local is not None else storage.location
    print(
        f"Badge Data Platform: lake {where}{note}, "
        f"service http://{settings.api_host}:{settings.api_port}, dashboard {url}  (Ctrl-C stops everything)",
        flush=True,
    )
    manager.loop()
    code = manager.returncode or 0
    return EXIT_OK if code in STOPPED_BY_SIGNAL else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processes.launcher", description=__doc__)
    parser.add_argument(
        "--local-s3",
        type=int,
        nargs="?",
        const=LOCAL_S3_PORT,
        metavar="PORT",
        help=f"run the lake on a local S3 server (moto's, in memory) on PORT (default {LOCAL_S3_PORT}): {LAKE_URL}",
    )
    args = parser.parse_args(argv)
    return run_main(lambda: serve(get_settings(), s3_port=args.local_s3))


if __name__ == "__main__":
    sys.exit(main())
