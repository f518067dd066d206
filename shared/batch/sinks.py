"""What batch needs from storage beyond ``ObjectStore``: size, ranged reads, streamed concat.

These dispatch on the provider behind the store (Azure Blob, S3, local directory) and fall
back to the plain ``ObjectStore`` protocol for any other store, so the engine runs against
anything that implements the seam.

- ``stat``: size and etag without downloading.
- ``read_from``: the object's bytes from an offset, in chunks (Azure ``download_blob(offset=)
  .chunks()``, S3 ranged ``GetObject`` body ``iter_chunks``, a seek locally).
- ``concat``: one object written from many, streamed (Azure block list, S3 multipart upload,
  a temp file and ``os.replace`` locally): output files of any size never sit in memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.storage import ObjectNotFound, ObjectStore

CHUNK = 4 * 1024 * 1024
S3_PART = 8 * 1024 * 1024


def _kind(store: ObjectStore) -> str:
    name = type(store).__name__
    if name == "AzureBlobStore":
        return "azure"
    if name == "S3Store":
        return "s3"
    if name == "LocalStore":
        return "local"
    return "generic"


def _blob(store: ObjectStore, key: str) -> Any:
    from shared.storage.azure_blob import blob_service

    return blob_service().get_container_client(store.namespace).get_blob_client(key)


def _s3(store: ObjectStore, key: str) -> tuple[Any, str, str]:
    from shared.storage.s3 import aws_client

    bucket = str(getattr(store, "bucket", ""))
    prefix = f"{store.namespace.strip('/')}/" if store.namespace else ""
    return aws_client("s3"), bucket, prefix + key.lstrip("/")


def _local(store: ObjectStore, key: str) -> Path:
    base: Path = getattr(store, "base")  # noqa: B009 - LocalStore's public root
    return base.joinpath(*key.strip("/").split("/"))


def stat(store: ObjectStore, key: str) -> tuple[int, str] | None:
    """``(size, etag)`` of ``key``, or ``None`` when it does not exist."""
    kind = _kind(store)
    if kind == "azure":
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = _blob(store, key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return int(props.size), str(props.etag)
    if kind == "s3":
        from botocore.exceptions import ClientError

        client, bucket, full = _s3(store, key)
        try:
            head = client.head_object(Bucket=bucket, Key=full)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"]), str(head["ETag"])
    obj = store.get(key)
    return None if obj is None else (len(obj.data), obj.etag)


def read_from(store: ObjectStore, key: str, start: int, size: int) -> Iterator[bytes]:
    """The bytes of ``key`` from ``start`` to its end (``size`` as given by ``stat``)."""
    if start >= size:
        return
    kind = _kind(store)
    if kind == "azure":
        downloader = _blob(store, key).download_blob(offset=start, length=size - start)
        yield from downloader.chunks()
        return
    if kind == "s3":
        client, bucket, full = _s3(store, key)
        body = client.get_object(Bucket=bucket, Key=full, Range=f"bytes={start}-{size - 1}")["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()
        return
    if kind == "local":
        with open(_local(store, key), "rb") as fh:
            fh.seek(start)
            while chunk := fh.read(CHUNK):
                yield chunk
        return
    reader = store.open_read(key)
    try:
        skip = start
        while skip > 0:
            got = reader.read(min(skip, CHUNK))
            if not got:
                return
            skip -= len(got)
        while chunk := reader.read(CHUNK):
            yield chunk
    finally:
        reader.close()


def _chunks(store: ObjectStore, keys: Sequence[str]) -> Iterator[bytes]:
    for key in keys:
        reader = store.open_read(key)
        try:
            while chunk := reader.read(CHUNK):
                yield chunk
        finally:
            reader.close()


def concat(
    dest: ObjectStore,
    key: str,
    source: ObjectStore,
    parts: Sequence[str],
    *,
    content_type: str = "application/jsonl",
) -> None:
    """Write ``dest/key`` as the concatenation of ``source/parts`` in order, streamed.

    Nothing is visible at ``key`` until every part was read: a missing part raises
    ``ObjectNotFound`` and leaves the previous object (if any) in place.
    """
    kind = _kind(dest)
    if kind == "azure":
        _concat_azure(dest, key, _chunks(source, parts), content_type)
    elif kind == "s3":
        _concat_s3(dest, key, _chunks(source, parts), content_type)
    elif kind == "local":
        path = _local(dest, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in _chunks(source, parts):
                    fh.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    else:
        dest.put(key, b"".join(_chunks(source, parts)), content_type=content_type)


def _concat_azure(dest: ObjectStore, key: str, chunks: Iterator[bytes], ctype: str) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobBlock, ContentSettings

    from shared.storage.azure_blob import blob_service

    with contextlib.suppress(ResourceExistsError):
        blob_service().get_container_client(dest.namespace).create_container()
    blob = _blob(dest, key)
    blocks: list[BlobBlock] = []
    prefix = uuid.uuid4().hex[:16]
    for chunk in chunks:
        block_id = f"{prefix}-{len(blocks):08d}"
        blob.stage_block(block_id, chunk)
        blocks.append(BlobBlock(block_id=block_id))
    blob.commit_block_list(blocks, content_settings=ContentSettings(content_type=ctype))


def _concat_s3(dest: ObjectStore, key: str, chunks: Iterator[bytes], ctype: str) -> None:
    client, bucket, full = _s3(dest, key)
    buf = bytearray()
    upload_id: str | None = None
    etags: list[dict[str, Any]] = []
    try:
        for chunk in chunks:
            buf += chunk
            if len(buf) >= S3_PART:
                if upload_id is None:
                    created = client.create_multipart_upload(
                        Bucket=bucket, Key=full, ContentType=ctype
                    )
                    upload_id = str(created["UploadId"])
                n = len(etags) + 1
                part = client.upload_part(
                    Bucket=bucket, Key=full, UploadId=upload_id, PartNumber=n, Body=bytes(buf)
                )
                etags.append({"PartNumber": n, "ETag": part["ETag"]})
                buf.clear()
        if upload_id is None:
            client.put_object(Bucket=bucket, Key=full, Body=bytes(buf), ContentType=ctype)
            return
        if buf:
            n = len(etags) + 1
            part = client.upload_part(
                Bucket=bucket, Key=full, UploadId=upload_id, PartNumber=n, Body=bytes(buf)
            )
            etags.append({"PartNumber": n, "ETag": part["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": etags}
        )
    except BaseException:
        if upload_id is not None:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
        raise


__all__ = ["ObjectNotFound", "concat", "read_from", "stat"]
