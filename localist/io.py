"""Atomic reads and writes on any pyarrow filesystem URI (local path, file://, s3://, gs://).

Every result file goes through here so that a crash never leaves a half-written Parquet file
visible: data is written to a temporary name beside the target and then renamed into place.
On object stores an upload only becomes the object once it is complete (pyarrow's multipart
upload is completed last), so the temporary step is skipped there.

Object storage fails now and then (a 500, a reset connection, a slow answer). S3 filesystems
made here retry each request through pyarrow's S3 retry strategy (AWS's standard one, S3_ATTEMPTS
attempts), which they keep when pickled, as Tune does to send its storage to every trial. An
operation that still fails with a transient error is tried again whole, RETRIES times, each retry
logged (WARNING, logger "localist.storage", lines starting RETRY_TAG): a sweep's driver writes
them to its log file, never its console.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import posixpath
import re
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


# S3 credentials, region and endpoint override as pyarrow (and every AWS tool) reads them from the
# environment (AWS_ENDPOINT_URL is how S3-compatible stores are reached). Paths such as AWS_PROFILE
# or AWS_SHARED_CREDENTIALS_FILE are left out: they mean nothing on another machine.
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
          "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


S3_ATTEMPTS = 4  # per request, pyarrow's (AWS's standard) S3 retry strategy
RETRIES = 3  # then per operation, after a transient error that outlived those attempts
RETRY_TAG = "(storage retry)"
log = logging.getLogger("localist.storage")
# pyarrow's messages for failures worth another try: network, throttling, server errors, timeouts
# (a host name that does not resolve, or missing credentials, are not)
TRANSIENT = re.compile(r"INTERNAL_FAILURE|SERVICE_UNAVAILABLE|SLOW_DOWN|THROTTL|REQUEST_TIMEOUT|HTTP status 5\d\d"
                       r"|InternalError|curlCode: (7|18|28|52|55|56)\b|[Cc]onnection (reset|refused)|[Tt]imed? ?out")


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _s3(options: dict) -> pafs.S3FileSystem:
    return _RetryingS3(**options)


class _RetryingS3(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with S3_ATTEMPTS attempts per request, also once unpickled."""

    def __init__(self, **options):
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS), **options)
        self._options = options

    def __reduce__(self):
        return _s3, (self._options,)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a URI; plain paths are made absolute."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    fs, path = pafs.FileSystem.from_uri(uri)
    if type(fs) is pafs.S3FileSystem:  # the URI's options (endpoint, region...), with our retry strategy
        fs = _RetryingS3(**fs.__reduce__()[1][0])
    return fs, path


def _retried(uri_arg: int = 0):
    """Run an operation again after a transient failure on object storage (see the module's docstring)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            uri = args[uri_arg]
            for attempt in range(RETRIES + 1):
                try:
                    return fn(*args, **kwargs)
                except OSError as e:
                    if is_local(uri) or isinstance(e, FileNotFoundError) or attempt == RETRIES \
                            or not TRANSIENT.search(str(e)):
                        raise
                    wait = 0.5 * 2 ** attempt
                    what = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                    log.warning(f"{RETRY_TAG} {fn.__name__} {uri.partition('?')[0]}: {what}; "
                                f"again in {wait:g} s ({attempt + 1} of {RETRIES})")
                    time.sleep(wait)
        return run
    return wrap


def join(uri: str, *parts: str) -> str:
    """Path parts go before a URI's query (s3://b/p?endpoint_override=...), which applies to every child."""
    if "://" in uri:
        base, sep, query = uri.partition("?")
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts) + sep + query
    return os.path.join(uri, *parts)


def parent(uri: str) -> str:
    """The folder holding `uri` (its query kept); '.' for a bare relative name."""
    base, sep, query = uri.partition("?") if "://" in uri else (uri, "", "")
    base = base.rstrip("/")
    return (base.rsplit("/", 1)[0] if "/" in base else ".") + sep + query


@_retried()
def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@_retried()
def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


@_retried()
def listdir(uri: str) -> list[str]:
    """Names of the entries directly under a directory URI ([] when it does not exist)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


@_retried()
def list_files(uri: str) -> list[str]:
    """Every file below a directory URI, as '/'-separated paths relative to it ([] when it does not
    exist), from one recursive listing: on an object store one paginated LIST, not a call per folder."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    root = path.rstrip("/") + "/"
    return sorted(i.path[len(root):] for i in infos if i.type == pafs.FileType.File and i.path.startswith(root))


def map_threads(fn, items, threads: int = 16) -> list:
    """``[fn(x) for x in items]`` on a thread pool: reads from storage wait on the network or the
    disk, not the CPU, so a thousand small reads overlap (pyarrow releases the GIL while it waits)."""
    items = list(items)
    if len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


@_retried()
def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically (temp name + rename on filesystems that have rename)."""
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if "://" in uri else os.path.dirname(path)
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return
    with fs.open_output_stream(path) as f:  # object stores: the object appears once the upload is complete
        f.write(data)


@_retried()
def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_parquet(table: pa.Table, uri: str) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(uri, buf.getvalue())


@_retried()
def read_parquet(uri: str) -> pa.Table:
    """A whole Parquet file, through one open (``pq.read_table(path, filesystem=...)`` asks for the
    file's info and opens it twice: three calls per file on an object store, not one)."""
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f)


@_retried()
def read_parquet_rows(uri: str, columns: list[str] | None = None) -> list[dict]:
    """A small Parquet file as rows, without pyarrow.dataset (which imports pandas: seconds)."""
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read(columns=columns).to_pylist()


@_retried()
def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


@_retried(1)
def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder's files to uri (any filesystem), replacing what was there."""
    fs, path = resolve(uri)
    if exists(uri):
        delete(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def probe(uri: str) -> str | None:
    """None when a small file can be written and removed under uri, else the reason it cannot."""
    target = join(uri, f".probe-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes(target, b"ok")
        delete(target)
    except Exception as e:  # pyarrow and the OS raise many types for the same failure
        return f"{type(e).__name__}: {e}"
    return None
