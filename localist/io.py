"""Atomic reads and writes on any pyarrow filesystem URI (local path, file://, s3://, gs://).

Every result file goes through here so that a crash never leaves a half-written Parquet file
visible: data is written to a temporary name beside the target and then renamed into place.
On object stores a single PUT is already atomic, so the temporary step is skipped there.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


# S3 credentials, region and endpoint override as pyarrow (and every AWS tool) reads them from the
# environment (AWS_ENDPOINT_URL is how S3-compatible stores are reached). Paths such as AWS_PROFILE
# or AWS_SHARED_CREDENTIALS_FILE are left out: they mean nothing on another machine.
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
          "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a URI; plain paths are made absolute."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


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


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def listdir(uri: str) -> list[str]:
    """Names of the entries directly under a directory URI ([] when it does not exist)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


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
    with fs.open_output_stream(path) as f:  # object stores: one PUT is atomic
        f.write(data)


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


def read_parquet(uri: str) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs)


def read_parquet_rows(uri: str, columns: list[str] | None = None) -> list[dict]:
    """A small Parquet file as rows, without pyarrow.dataset (which imports pandas: seconds)."""
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read(columns=columns).to_pylist()


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


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
