"""Amazon S3 object store: one bucket (``INFER_BUCKET``), one key prefix per namespace.

Conditional writes use S3's own ``IfNoneMatch='*'`` and ``IfMatch=<etag>`` on PutObject
(S3 has them since 2024; moto server implements both), so no lease or marker objects are
needed. A refusal (412 PreconditionFailed, 409 ConditionalRequestConflict, or 404 for
``IfMatch`` on a missing key) becomes ``PreconditionFailed``.

The client honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (moto server locally).
"""

from __future__ import annotations

from typing import Any

from shared.lifecycle import Keyed
from shared.storage.base import (
    ObjectNotFound,
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


class S3Store:
    def __init__(self, bucket: str, namespace: str, client: Any | None = None) -> None:
        self.namespace = namespace
        self.bucket = bucket
        self._prefix = f"{namespace.strip('/')}/" if namespace else ""
        self._client = client or aws_client("s3")

    def _key(self, key: str) -> str:
        return self._prefix + key.lstrip("/")

    def get(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise StorageError(f"reading s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return StoredObject(data=obj["Body"].read(), etag=str(obj["ETag"]))

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "ContentType": content_type,
        }
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            out = self._client.put_object(**kwargs)
        except ClientError as exc:
            code = _code(exc)
            conditional = if_none_match or if_match is not None
            if conditional and (code in _PRECONDITION_CODES or code in _MISSING_CODES):
                raise PreconditionFailed(f"s3://{self.bucket}/{self._key(key)}: {code}") from exc
            raise StorageError(f"writing s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return str(out["ETag"])

    def open_read(self, key: str) -> Reader:
        from botocore.exceptions import ClientError

        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise ObjectNotFound(f"s3://{self.bucket}/{self._key(key)} does not exist") from exc
            raise StorageError(f"reading s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        body: Reader = obj["Body"]
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
