"""A local S3 endpoint for ``make run LAKE=s3``: moto's S3 server in a process of its own, on loopback.

It speaks the S3 API (conditional PUTs included), keeps everything in memory (stopping it empties the
lake), and takes any credentials. For data that must outlive it, point the lake at MinIO or AWS S3
instead (README, "Object storage (S3)").
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Final

import httpx

from utils.errors import ConfigError

BUCKET: Final = "badge-lake"
LAKE_URL: Final = f"s3://{BUCKET}/lake"
START_SECONDS: Final = 30.0


def environment(endpoint: str) -> dict[str, str]:
    """The AWS_* variables that point delta-rs, obstore, pyarrow and boto3 at ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",  # moto takes any credentials: not a secret
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


@contextlib.contextmanager
def local_s3(port: int, bucket: str = BUCKET) -> Iterator[str]:
    """moto's S3 server on ``127.0.0.1:port`` with ``bucket`` created; yields its endpoint; always stopped.

    Raises ConfigError if it does not answer within START_SECONDS (moto not installed, the port taken).
    """
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a terminal's Ctrl-C must not stop it before the others have released it
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                httpx.put(f"{endpoint}/{bucket}", timeout=2).raise_for_status()  # create the bucket
                break
            except httpx.HTTPError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(
                        "LAKE", "s3", f"a local S3 server on port {port} (moto's did not start: {exc})"
                    ) from exc
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
