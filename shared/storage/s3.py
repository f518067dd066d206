"""Amazon S3 object store: one bucket (``INFER_BUCKET``), one key prefix per namespace.

Conditional writes use S3's own ``IfNoneMatch='*'`` and ``IfMatch=<etag>`` on PutObject
(S3 has them since 2024; moto server implements both), so no lease or marker objects are
needed. A refusal (412 PreconditionFailed, 409 ConditionalRequestConflict, or 404 for
``IfMatch`` on a missing key) becomes ``PreconditionFailed``.

``stat`` is ``HeadObject``, ``stream`` a ranged ``GetObject``, and ``concat`` one
``PutObject`` or, past ``part_bytes``, a multipart upload completed after the last part and
aborted on any error (IAM: ``s3:PutObject``, ``s3:AbortMultipartUpload``).

The client honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (moto server locally).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from shared.lifecycle import Keyed
from shared.storage.base import (
    CHUNK,
    Condition,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    Reader,
    StorageError,
    StoredObject,
)

_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _build_client(service: str) -> Any:
    import boto3

    from shared.storage.deadline import boto_config, install_boto_deadline

    return install_boto_deadline(boto3.session.Session().client(service, config=boto_config()))


_clients: Keyed[str, Any] = Keyed(_build_client)


def aws_client(service: str) -> Any:
    """The process's boto3 client for ``service`` (built on first use, reused); its
    timeouts and retries are bounded per call (``shared.storage.deadline``)."""
    return _clients.get(service)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    err = response.get("Error", {})
    return str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3Store(ObjectStore):
    part_bytes = 8 * 1024 * 1024  # the multipart upload's part size in ``concat``

    def __init__(self, bucket: str, namespace: str, client: Any | None = None) -> None:
        self.namespace = namespace
        self.bucket = bucket
        self._prefix = f"{namespace.strip('/')}/" if namespace else ""
        self._client = client or aws_client("s3")

    def _key(self, key: str) -> str:
        return self._prefix + key.lstrip("/")

    def _get_object(self, key: str, **kwargs: Any) -> Any:
        """``GetObject``; ``ObjectNotFound`` when the key is missing, else ``StorageError``."""
        from botocore.exceptions import ClientError

        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise ObjectNotFound(f"s3://{self.bucket}/{self._key(key)} does not exist") from exc
            raise StorageError(f"reading s3://{self.bucket}/{self._key(key)}: {exc}") from exc

    def get(self, key: str) -> StoredObject | None:
        try:
            obj = self._get_object(key)
        except ObjectNotFound:
            return None
        return StoredObject(data=obj["Body"].read(), etag=str(obj["ETag"]))

    def _put(self, key: str, data: bytes, cond: Condition, content_type: str) -> str:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "ContentType": content_type,
        }
        if cond.if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if cond.if_match is not None:
            kwargs["IfMatch"] = cond.if_match
        try:
            out = self._client.put_object(**kwargs)
        except ClientError as exc:
            code = _code(exc)
            if cond.conditional and (code in _PRECONDITION_CODES or code in _MISSING_CODES):
                raise PreconditionFailed(f"s3://{self.bucket}/{self._key(key)}: {code}") from exc
            raise StorageError(f"writing s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return str(out["ETag"])

    def open_read(self, key: str) -> Reader:
        body: Reader = self._get_object(key)["Body"]
        return body

    def list(self, prefix: str = "") -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        cut = len(self._prefix)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(str(o["Key"])[cut:] for o in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def stat(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise StorageError(f"reading s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return ObjectInfo(int(head["ContentLength"]), str(head["ETag"]))

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """A ranged ``GetObject`` (``Range: bytes=start-[end-1]``), its body in chunks."""
        if end is not None and start >= end:
            return
        ranged = start > 0 or end is not None
        rng = f"bytes={start}-{'' if end is None else end - 1}"
        body = self._get_object(key, **({"Range": rng} if ranged else {}))["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def _put_stream(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        """One ``PutObject`` when the whole fits in a part, else a multipart upload of
        ``part_bytes`` parts, completed only after the last chunk and aborted on any error."""
        from botocore.exceptions import ClientError

        client, bucket, full = self._client, self.bucket, self._key(key)
        buf = bytearray()
        upload_id: str | None = None
        etags: list[dict[str, Any]] = []

        def upload_part() -> None:
            n = len(etags) + 1
            part = client.upload_part(
                Bucket=bucket, Key=full, UploadId=upload_id, PartNumber=n, Body=bytes(buf)
            )
            etags.append({"PartNumber": n, "ETag": part["ETag"]})
            buf.clear()

        try:
            for chunk in chunks:
                buf += chunk
                if len(buf) >= self.part_bytes:
                    if upload_id is None:
                        created = client.create_multipart_upload(
                            Bucket=bucket, Key=full, ContentType=content_type
                        )
                        upload_id = str(created["UploadId"])
                    upload_part()
            if upload_id is None:
                client.put_object(
                    Bucket=bucket, Key=full, Body=bytes(buf), ContentType=content_type
                )
                return
            if buf:
                upload_part()
            client.complete_multipart_upload(
                Bucket=bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": etags}
            )
        except BaseException as exc:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
            if isinstance(exc, ClientError):
                raise StorageError(f"writing s3://{bucket}/{full}: {exc}") from exc
            raise
