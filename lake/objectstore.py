"""The lake's door to S3-compatible object storage (AWS S3, MinIO, Ceph, R2), through obstore.

:class:`ObjectStorage` keeps :class:`~lake.storage.LocalStorage`'s contract, in keys relative to the
lake's prefix (``"landing/x.parquet"``), so the code above it does not change with the backend:

* ``publish`` is the commit point of a data file, and it is **conditional on the final key being free**
  whatever the file's size: an object appears there whole or not at all, and never over another. A second
  publish of the same key fails with :class:`~utils.errors.CommitError` and the first object stays. Two
  paths, both atomic on S3:

  - below ``multipart_threshold`` (:data:`MULTIPART_THRESHOLD`, 64 MiB): **one PUT to the final key with
    ``If-None-Match: *``** (obstore's ``mode="create"``), which sends the whole file in one request body;
  - at or above it: **a multipart upload completed with ``If-None-Match: *``**, through boto3 (obstore has
    no conditional multipart upload). The parts (``part_size``, :data:`PART_SIZE`, 16 MiB) are read from
    the local file one at a time, so memory stays bounded by one part, and a file may exceed a single PUT's
    5 GB cap. Parts are invisible to readers; the object appears only when ``CompleteMultipartUpload``
    succeeds, and S3 evaluates the condition there, atomically with it. Whatever goes wrong (the condition
    refused: CommitError; a failed request: LakeError), the upload is aborted so no parts linger.
* Files are written locally first (``staged`` yields a path in a private scratch directory of the
  machine, not in the lake: object storage has no rename, so the lake's ``temp/`` is not used), then
  uploaded by ``publish``, which removes the local copy either way.
* Reads classify errors: a missing object is ``FileNotFoundError``; a failed request (network, a
  5xx, throttling) is :class:`~utils.errors.LakeError`, retryable and never taken for damage; only bytes
  that were read and are not Parquet are :class:`~utils.errors.CorruptFileError`.
* ``delete`` is idempotent and says whether the object was there.

Credentials, region and endpoint come from the standard variables that delta-rs, object_store and
boto3 all read: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ALLOW_HTTP`` (see :func:`s3_options`); the boto3 client of multipart uploads is built from the same
options (:func:`_boto3_s3`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import obstore
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import S3Store

from lake import layout
from lake.storage import FileInfo, Storage
from utils.errors import CommitError, CorruptFileError, LakeError, one_line

if TYPE_CHECKING:
    from obstore import ObjectMeta

SCRATCH_PREFIX: Final = "badge-lake-"  # local scratch directories: badge-lake-<pid>-<random>
FOOTER_READ_BYTES: Final = 64 * 1024  # the first range read from a file's end: the footer, usually whole
PARQUET_MAGIC: Final = b"PAR1"

MiB: Final = 1024 * 1024
MULTIPART_THRESHOLD: Final = 64 * MiB  # files this large or larger are published as a multipart upload
PART_SIZE: Final = 16 * MiB  # the parts of a multipart upload (the last one is what remains)
MIN_PART_SIZE: Final = 5 * MiB  # S3's smallest part (every part but the last)
MAX_PARTS: Final = 10_000  # S3's most parts in one upload (the part size grows for a larger file)
MAX_PUT_SIZE: Final = 5 * 1024 * MiB  # S3's largest single PUT: the threshold may not exceed it

# boto3's requests as obstore's defaults: up to 10 retries (5xx, throttling, connection errors) with
# exponential backoff, 5 s to connect, 30 s to wait for an answer.
BOTO3_MAX_ATTEMPTS: Final = 11
BOTO3_CONNECT_TIMEOUT_S: Final = 5
BOTO3_READ_TIMEOUT_S: Final = 30

log = logging.getLogger(__name__)

# The environment variables the lake's S3 access reads, and the obstore / delta-rs option each sets.
S3_ENV: Final[Mapping[str, str]] = {
    "AWS_ENDPOINT_URL": "aws_endpoint",
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_REGION": "aws_region",
    "AWS_ALLOW_HTTP": "aws_allow_http",
}


def s3_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3 client options (``aws_*`` keys, as obstore and delta-rs spell them) from the environment."""
    environ = os.environ if environ is None else environ
    return {option: environ[variable] for variable, option in S3_ENV.items() if environ.get(variable)}


def new_scratch_dir(base: Path | None = None) -> Path:
    """A private local directory for files about to be uploaded: ``<tmp>/badge-lake-<pid>-<random>``.

    First removes the scratch directories of processes that no longer run (a writer killed between
    writing a file and uploading it leaves one): each belongs to one process, named by its pid, so no
    live process ever loses a file. A pid reused by another process keeps its directory (the safe side).
    """
    base = Path(tempfile.gettempdir()) if base is None else base
    for old in base.glob(f"{SCRATCH_PREFIX}*"):
        pid = old.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=base))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _arrow_s3(options: Mapping[str, str]) -> pafs.S3FileSystem:
    """pyarrow's S3 file system configured as obstore is (the same ``aws_*`` options)."""
    endpoint = options.get("aws_endpoint")
    scheme, _, host = endpoint.partition("://") if endpoint else ("https", "", "")
    return pafs.S3FileSystem(
        access_key=options.get("aws_access_key_id"),
        secret_key=options.get("aws_secret_access_key"),
        session_token=options.get("aws_session_token"),
        region=options.get("aws_region") or "us-east-1",
        endpoint_override=host or None,
        scheme=scheme,
    )


def _boto3_s3(options: Mapping[str, str]) -> Any:
    """A boto3 S3 client configured as obstore is (the same ``aws_*`` options), for multipart uploads.

    Anything the options leave out (no keys: a role, a profile) boto3 finds in its own default chain, as
    obstore does in its. Its own session, since boto3's default one is not safe to share across threads.
    Checksums only where S3 requires them: each part carries its Content-MD5 instead (see
    :meth:`ObjectStorage._put_new_in_parts`), which S3 and the S3-compatible stores check, where botocore's
    default CRC32 checksums are not supported by some S3-compatible stores. Path-style addressing on a
    custom endpoint, as obstore uses there.
    """
    import boto3
    from botocore.config import Config

    endpoint = options.get("aws_endpoint")
    config = Config(
        retries={"mode": "standard", "total_max_attempts": BOTO3_MAX_ATTEMPTS},
        connect_timeout=BOTO3_CONNECT_TIMEOUT_S,
        read_timeout=BOTO3_READ_TIMEOUT_S,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=options.get("aws_access_key_id"),
        aws_secret_access_key=options.get("aws_secret_access_key"),
        aws_session_token=options.get("aws_session_token"),
        region_name=options.get("aws_region") or "us-east-1",
        config=config,
    )


def _precondition_failed(response: Mapping[str, Any]) -> bool:
    """True if boto3's error ``response`` is S3's 412 Precondition Failed (a condition did not hold)."""
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return bool(code == "PreconditionFailed" or status == 412)


def _mtime_ns(meta: ObjectMeta) -> int:
    """An object's last-modified instant in ns (S3 keeps whole seconds)."""
    return int(meta["last_modified"].timestamp() * 1_000_000) * 1_000


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    return parts.netloc, parts.path.strip("/")


class ObjectStorage(Storage):
    """A lake under ``s3://bucket/prefix`` (see the module docstring for the guarantees)."""

    def __init__(
        self,
        url: str,
        environ: Mapping[str, str] | None = None,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ) -> None:
        """``multipart_threshold``: the size from which ``publish`` uploads a file in parts of ``part_size``.

        ValueError if S3 could not take them: a part below 5 MiB, a threshold above a single PUT's 5 GB.
        """
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size={part_size} is below S3's smallest part ({MIN_PART_SIZE} bytes)")
        if not 0 < multipart_threshold <= MAX_PUT_SIZE:
            raise ValueError(f"multipart_threshold={multipart_threshold} is not in 1..{MAX_PUT_SIZE} (a PUT's limit)")
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.options = s3_options(environ)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._store = S3Store(self.bucket, prefix=self.prefix or None, config=self.options)  # type: ignore[arg-type]
        self._scratch: Path | None = None
        self._filesystem: pafs.S3FileSystem | None = None
        self._boto3: Any = None  # built on the first multipart upload (importing boto3 takes a while)
        self._boto3_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectStorage({self.url!r})"

    # -- layout -------------------------------------------------------------------------------------
    def ensure_layout(self) -> None:
        """Nothing to create: object storage has no directories (zones exist as key prefixes)."""

    @property
    def location(self) -> str:
        return self.url

    @property
    def store(self) -> S3Store:
        """The obstore client rooted at the lake's prefix (for the compactor's lease)."""
        return self._store

    def table_uri(self, prefix: str = "") -> str:
        return f"{self.url}/{prefix}" if prefix else self.url

    @property
    def storage_options(self) -> dict[str, str] | None:
        return dict(self.options)

    def published(self, key: str) -> FileInfo | None:
        """The object at ``key`` if it exists (a PUT is durable once answered: nothing more to make durable)."""
        try:
            with self._request(key, "looked up"):
                meta = obstore.head(self._store, key)
        except FileNotFoundError:
            return None
        return FileInfo(key, int(meta["size"]), _mtime_ns(meta))

    def open_input(self, key: str) -> pa.NativeFile:
        """A seekable reader of the object through pyarrow's S3 file system (ranged GETs as Parquet asks)."""
        if self._filesystem is None:
            self._filesystem = _arrow_s3(self.options)
        path = f"{self.bucket}/{self.prefix}/{key}" if self.prefix else f"{self.bucket}/{key}"
        return self._filesystem.open_input_file(path)

    def write_new(self, key: str, data: bytes) -> bool:
        """Create a small object with ``If-None-Match: *``; False if one was there (it stands)."""
        return self._put_new(key, data, "written")

    def _put_new(self, key: str, data: bytes | Path, what: str) -> bool:
        """One PUT of ``data`` with ``If-None-Match: *``: True if created, False if an object was there (untouched)."""
        try:
            with self._request(key, what):
                obstore.put(self._store, key, data, mode="create")
        except LakeError as exc:
            if isinstance(exc.__cause__, AlreadyExistsError):
                return False
            raise
        return True

    def uri(self, key: str) -> str:
        """The object's URL, for engines that read it directly (delta-rs, Spark with ``s3a://``)."""
        return f"{self.url}/{key}"

    def exists(self, key: str) -> bool:
        return self.published(key) is not None

    @contextlib.contextmanager
    def _request(self, key: str, what: str) -> Iterator[None]:
        """Translate a failed request (network, 5xx, throttling) into LakeError: retryable, never damage.

        FileNotFoundError (a missing object) passes through as it is.
        """
        try:
            yield
        except BaseError as exc:
            raise LakeError(f"{self.uri(key)}: could not be {what} ({one_line(exc)})") from exc

    # -- listing ------------------------------------------------------------------------------------
    def list_files(self, zone: str, suffix: str = layout.PARQUET_SUFFIX) -> list[FileInfo]:
        """Objects directly under ``zone/`` ending in ``suffix``, sorted by key; an empty zone is empty."""
        out: list[FileInfo] = []
        with self._request(f"{zone}/", "listed"):
            listing = obstore.list_with_delimiter(self._store, f"{zone}/")
        for meta in listing["objects"]:
            key = str(meta["path"])
            if not key.endswith(suffix):
                continue
            out.append(FileInfo(key, int(meta["size"]), _mtime_ns(meta)))
        out.sort()
        return out

    def list_tree(self, zone: str, suffix: str = layout.PARQUET_SUFFIX) -> list[FileInfo]:
        """Objects under ``zone/`` at any depth (date partitions; ``""``: the whole lake) ending in ``suffix``,
        sorted by key: one recursive LIST (paged by the store)."""
        out: list[FileInfo] = []
        prefix = f"{zone}/" if zone else None
        with self._request(prefix or "", "listed"):
            for page in obstore.list(self._store, prefix, chunk_size=1_000):
                out += [
                    FileInfo(str(meta["path"]), int(meta["size"]), _mtime_ns(meta))
                    for meta in page
                    if str(meta["path"]).endswith(suffix)
                ]
        out.sort()
        return out

    # -- metadata and reading -----------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        """The whole object. FileNotFoundError if it is not there, LakeError if the request failed."""
        with self._request(key, "read"):
            return bytes(obstore.get(self._store, key).bytes())

    def read_footer(self, key: str) -> pq.FileMetaData:
        """The Parquet footer of ``key``, in one or two range requests from the object's end.

        Errors classified as :meth:`LocalStorage.read_footer`'s: FileNotFoundError, LakeError (the
        request failed: retryable, never damage), CorruptFileError (the bytes read are not Parquet).
        """
        with self._request(key, "read"):
            size = int(obstore.head(self._store, key)["size"])
            tail = self._tail(key, size, min(size, FOOTER_READ_BYTES))
            if len(tail) < 8 or tail[-4:] != PARQUET_MAGIC:
                raise CorruptFileError(f"{self.uri(key)}: not readable Parquet (no Parquet footer at its end)")
            needed = int.from_bytes(tail[-8:-4], "little") + 8 + len(PARQUET_MAGIC)  # footer, its length, magics
            if needed > len(tail) and needed <= size:
                tail = self._tail(key, size, needed)
        try:
            return pq.read_metadata(pa.BufferReader(tail))
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"{self.uri(key)}: not readable Parquet ({exc})") from exc

    def _tail(self, key: str, size: int, length: int) -> bytes:
        return bytes(obstore.get_range(self._store, key, start=size - length, length=length))

    # -- writing ------------------------------------------------------------------------------------
    def new_temp_path(self, name: str) -> Path:
        """A fresh local path for a file that will be published as ``name`` (a private scratch directory)."""
        if self._scratch is None:
            self._scratch = new_scratch_dir()
        return self._scratch / f"{name}.{uuid.uuid4().hex[:8]}.tmp"

    def publish(self, tmp: Path, zone: str, name: str) -> FileInfo:
        """Upload a fully written local file as ``zone/name``, only if no object has that name.

        Below ``multipart_threshold`` in one conditional PUT, at or above it in a multipart upload whose
        completion is conditional (both ``If-None-Match: *``; see the module docstring). After it returns
        the object is whole and visible and the local file is gone. CommitError if an object of that name
        exists (nothing is overwritten); LakeError if a request failed (nothing was published: a PUT and a
        multipart completion are atomic, and a multipart upload that fails is aborted; the caller writes and
        publishes again).
        """
        key = f"{zone}/{name}"
        size = tmp.stat().st_size
        try:
            if size >= self.multipart_threshold:
                created = self._put_new_in_parts(key, tmp, size)
            else:
                created = self._put_new(key, tmp, "published")
            if not created:
                raise CommitError(f"could not publish {self.uri(key)}: an object of that name exists")
        finally:
            tmp.unlink(missing_ok=True)
        with self._request(key, "looked up"):
            meta = obstore.head(self._store, key)
        return FileInfo(key, size, _mtime_ns(meta))

    def _put_new_in_parts(self, key: str, path: Path, size: int) -> bool:
        """Upload ``path`` in parts, completed with ``If-None-Match: *``: True if created, False if a key was there.

        An object already at the key is untouched. The file is read one part at a time (memory: one part).
        Any failure, the refused condition included, aborts the upload, so no parts are left behind (if the
        abort fails too, a warning says so: the parts stay until a bucket lifecycle rule removes them). A
        failed request is LakeError; an error reading the local file (OSError) passes through as it is.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._s3_client()
        target = {"Bucket": self.bucket, "Key": f"{self.prefix}/{key}" if self.prefix else key}
        part_size = max(self.part_size, -(-size // MAX_PARTS))  # a file above 10,000 parts takes larger ones
        upload_id: str | None = None
        try:
            upload_id = str(client.create_multipart_upload(**target)["UploadId"])
            parts: list[dict[str, Any]] = []
            with path.open("rb") as source:
                while chunk := source.read(part_size):
                    number = len(parts) + 1
                    digest = base64.b64encode(hashlib.md5(chunk, usedforsecurity=False).digest()).decode()
                    answer = client.upload_part(
                        **target, UploadId=upload_id, PartNumber=number, Body=chunk, ContentMD5=digest
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            client.complete_multipart_upload(
                **target, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
        except BaseException as exc:
            if upload_id is not None:
                self._abort_upload(client, target, upload_id)
            if isinstance(exc, ClientError) and _precondition_failed(exc.response):
                return False
            if isinstance(exc, BotoCoreError | ClientError):
                raise LakeError(f"{self.uri(key)}: could not be published ({one_line(exc)})") from exc
            raise
        return True

    def _abort_upload(self, client: Any, target: Mapping[str, str], upload_id: str) -> None:
        """Abort a multipart upload (its parts are deleted); a failure to do so is logged, never raised."""
        try:
            client.abort_multipart_upload(**target, UploadId=upload_id)
        except Exception as exc:
            log.warning(
                "s3://%s/%s: multipart upload %s could not be aborted, its parts stay until a lifecycle rule "
                "removes them (%s)",
                target["Bucket"],
                target["Key"],
                upload_id,
                one_line(exc),
            )

    def _s3_client(self) -> Any:
        """The boto3 S3 client of multipart uploads, built once (see :func:`_boto3_s3`)."""
        with self._boto3_lock:
            if self._boto3 is None:
                self._boto3 = _boto3_s3(self.options)
            return self._boto3

    def delete(self, key: str) -> bool:
        """Remove ``key``; returns False if it was already gone (deleting is idempotent)."""
        if not self.exists(key):
            return False
        with self._request(key, "deleted"):
            obstore.delete(self._store, key)
        return True

    def close(self) -> None:
        """Remove the local scratch directory (files staged and not published are dropped); close boto3's client."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        with self._boto3_lock:
            client, self._boto3 = self._boto3, None
        if client is not None:
            client.close()
