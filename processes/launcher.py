"""``make run``: the whole platform in one terminal - service, pipeline (with its compactor), dashboard.

honcho multiplexes the processes' output with a prefix per process and, on Ctrl-C, sends SIGTERM to
every process group (the pipeline flushes what it holds and stops its compactor) and SIGKILL to any
that outlast the wait. Checks that would otherwise fail obscurely (a port in use, a lake locked by
another pipeline, a lake in the previous layout) are made first and reported in one line.
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
from lake.lock import LakeLock
from lake.storage import LocalStorage
from lake.table import ensure_migrated
from processes.cli import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, run_main
from utils.config import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processes.launcher", description=__doc__)
    parser.parse_args(argv)

    def run() -> int:
        settings = get_settings()
        for name, host, port in (
            ("API_PORT", settings.api_host, settings.api_port),
            ("DASHBOARD_PORT", "127.0.0.1", settings.dashboard_port),
        ):
            if port_in_use(host, port):
                print(f"error: port {port} on {host} is in use ({name}); stop what holds it or set {name}=<free port>")
                return EXIT_CONFIG
        lake = settings.local_lake_path("make run")  # ConfigError for an s3:// lake: one line, exit 2
        if LakeLock(lake, layout.PIPELINE_LOCK, "pipeline").is_locked_elsewhere():
            print(f"error: a pipeline already runs on {lake}; stop it first")
            return EXIT_LOCKED
        ensure_migrated(LocalStorage(lake))  # UnmigratedLakeError: one line, exit 2
        env = child_environment(settings)
        manager = Manager()
        for name, cmd in commands(settings).items():
            manager.add_process(name, cmd, env=env, cwd=str(ROOT))
        url = f"http://127.0.0.1:{settings.dashboard_port}"
        print(
            f"Badge Data Platform: lake {lake.resolve()}, "
            f"service http://{settings.api_host}:{settings.api_port}, dashboard {url}  (Ctrl-C stops everything)",
            flush=True,
        )
        manager.loop()
        code = manager.returncode or 0
        return EXIT_OK if code in STOPPED_BY_SIGNAL else code

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
