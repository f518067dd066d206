"""Queue-sender seam: put one JSON message on the jobs queue, on any platform.

``get_queue(name)`` returns a ``QueueSender`` for the current provider (see
``shared.storage.provider``):

- ``azure``: an Azure Storage queue on the ``AzureWebJobsStorage`` connection. Messages are
  base64 text (``TextBase64EncodePolicy``), what the queue trigger decodes by default
  (host.json ``messageEncoding: base64``). The queue is created on first use.
- ``s3`` (AWS): the SQS queue at ``INFER_QUEUE_URL`` (or the ``url`` given), plain JSON.
  ``delay_s`` becomes ``DelaySeconds`` (at most 900).
- ``local``: a spool directory ``<INFER_LOCAL_STORE>/queues/<name>/`` of one JSON file per
  message, for runs without any queue service (read it back with ``LocalQueue.drain``).

Claim-check: a message whose JSON is larger than the queue allows (Storage queue: 64 KB
after base64, so 48 KB of JSON; SQS: 256 KB) has its ``body`` moved to the object store
namespace ``job-bodies`` and replaced by ``"body_ref": "job-bodies/<uuid>.json"``;
``load_body_ref`` reads it back. Consumers must accept either form.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from shared.errors import ConfigError, InvalidRequest
from shared.lifecycle import Keyed

AZURE_LIMIT = 48 * 1024
SQS_LIMIT = 240 * 1024  # 256 KiB less room for attributes
BODIES_NAMESPACE = "job-bodies"
MAX_SQS_DELAY_S = 900


class QueueSender(Protocol):
    name: str

    def send(self, message: dict[str, Any], *, delay_s: float = 0) -> None:
        """Enqueue ``message`` (JSON-serialisable); visible after ``delay_s`` seconds."""
        ...

    def send_text(self, text: str, *, delay_s: float = 0) -> None:
        """Enqueue ``text`` exactly as given (a message re-sent keeps its bytes, so its
        derived job id), visible after ``delay_s`` seconds. No claim-check is applied."""
        ...


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def claim_check(message: dict[str, Any], limit: int) -> str:
    """The message text, with ``body`` moved to the object store when the text is too big."""
    text = encode(message)
    if len(text.encode()) <= limit or "body" not in message:
        return text
    from shared.storage import get_store

    key = f"{uuid.uuid4().hex}.json"
    get_store(BODIES_NAMESPACE).put(key, encode({"body": message["body"]}).encode())
    slim = {k: v for k, v in message.items() if k != "body"}
    slim["body_ref"] = f"{BODIES_NAMESPACE}/{key}"
    text = encode(slim)
    if len(text.encode()) > limit:
        raise InvalidRequest(
            f"queue message is too large even without its body ({len(text)} bytes)"
        )
    return text


def load_body_ref(ref: str) -> Any:
    """The body a claim-checked message refers to; ``LookupError`` when it is gone."""
    from shared.storage import get_store

    namespace, _, key = ref.partition("/")
    if not namespace or not key:
        raise LookupError(f"body_ref {ref!r} is not '<namespace>/<key>'")
    found = get_store(namespace).get(key)
    if found is None:
        raise LookupError(f"body_ref {ref!r} does not exist")
    return json.loads(found.data)["body"]


class AzureQueue:
    def __init__(self, name: str, client: Any | None = None) -> None:
        self.name = name
        self._client = client or _azure_queue_client(name)
        self._ready = False

    def send(self, message: dict[str, Any], *, delay_s: float = 0) -> None:
        self.send_text(claim_check(message, AZURE_LIMIT), delay_s=delay_s)

    def send_text(self, text: str, *, delay_s: float = 0) -> None:
        self._ensure()
        delay = max(0, math.ceil(delay_s))
        self._client.send_message(text, visibility_timeout=delay or None)

    def _ensure(self) -> None:
        if self._ready:
            return
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._client.create_queue()
        self._ready = True


def _azure_queue_client(name: str) -> Any:
    from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient, TextBase64EncodePolicy

    from shared.storage.azure_conn import connection_from_env, credential, sdk_transport
    from shared.storage.deadline import azure_retry_policy

    conn = connection_from_env(service="queue")
    policies: dict[str, Any] = {
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": BinaryBase64DecodePolicy(),
        "retry_policy": azure_retry_policy(),
        "transport": sdk_transport(),
    }
    if conn.connection_string:
        return QueueClient.from_connection_string(conn.connection_string, name, **policies)
    return QueueClient(conn.account_url or "", name, credential=credential(conn), **policies)


class SqsQueue:
    def __init__(self, name: str, url: str, client: Any | None = None) -> None:
        from shared.storage.s3 import aws_client

        self.name = name
        self.url = url
        self._client = client or aws_client("sqs")

    def send(self, message: dict[str, Any], *, delay_s: float = 0) -> None:
        self.send_text(claim_check(message, SQS_LIMIT), delay_s=delay_s)

    def send_text(self, text: str, *, delay_s: float = 0) -> None:
        delay = min(MAX_SQS_DELAY_S, max(0, math.ceil(delay_s)))
        self._client.send_message(QueueUrl=self.url, MessageBody=text, DelaySeconds=delay)


class LocalQueue:
    """A spool directory: one file per message, named so that sorting gives send order."""

    def __init__(self, name: str, root: Path | str) -> None:
        self.name = name
        self.path = Path(root) / "queues" / name
        self.path.mkdir(parents=True, exist_ok=True)

    def send(self, message: dict[str, Any], *, delay_s: float = 0) -> None:
        self.send_text(claim_check(message, AZURE_LIMIT), delay_s=delay_s)

    def send_text(self, text: str, *, delay_s: float = 0) -> None:
        visible = time.time() + max(0.0, delay_s)
        name = f"{visible:017.6f}-{uuid.uuid4().hex}.json"
        tmp = self.path / f".{name}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path / name)

    def drain(self) -> list[str]:
        """Remove and return the visible messages' text, oldest first."""
        out: list[str] = []
        now = time.time()
        for p in sorted(self.path.glob("[0-9]*.json")):
            if float(p.name.split("-", 1)[0]) > now:
                continue
            out.append(p.read_text(encoding="utf-8"))
            p.unlink()
        return out


def _build_queue(key: tuple[str, str | None]) -> QueueSender:
    from shared.storage import DEFAULT_LOCAL_ROOT, provider

    name, url = key
    kind = provider()
    if kind == "s3":
        queue_url = url or os.environ.get("INFER_QUEUE_URL")
        if not queue_url:
            raise ConfigError(
                "INFER_QUEUE_URL: the SQS queue URL is not set", param="INFER_QUEUE_URL"
            )
        return SqsQueue(name, queue_url)
    if kind == "azure":
        return AzureQueue(name)
    return LocalQueue(name, os.environ.get("INFER_LOCAL_STORE") or DEFAULT_LOCAL_ROOT)


_queues = Keyed(_build_queue)


def queue_configured() -> bool:
    """Whether this app has a jobs queue (AWS: ``INFER_QUEUE_URL``; Azure and the local
    spool: always). Reads settings only; builds nothing."""
    from shared.storage import provider

    return provider() != "s3" or bool(os.environ.get("INFER_QUEUE_URL"))


def get_queue(name: str = "inference-requests", *, url: str | None = None) -> QueueSender:
    """The sender for queue ``name`` (SQS: ``url`` or ``INFER_QUEUE_URL``), built once."""
    return _queues.get((name, url or None))
