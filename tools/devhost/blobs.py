"""Blob triggers: scan a container, invoke once per blob version, keep receipts, poison.

Like the host, each (function, blob, ETag) is processed once: a receipt blob in the
``azure-webjobs-hosts`` container records it. The receipt is written *before* each attempt
(status ``pending`` with the attempt number) and marked ``done`` after success, so a crash
mid-run retries the blob after a restart, and the attempt count survives restarts. After
``maxDequeueCount`` failed attempts the host's poison message goes to
``webjobs-blobtrigger-poison`` and the receipt is marked ``poisoned``.
A single devhost instance per storage account is assumed (no receipt leases).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobProperties, ContainerClient, StorageStreamDownloader
from azure.storage.queue import QueueClient

from tools.devhost.config import QueueOptions, resolve_setting_expressions
from tools.devhost.invoke import Invoker
from tools.devhost.registry import FunctionSpec
from tools.devhost.storage import encode_message

log = logging.getLogger("devhost")

RECEIPTS_CONTAINER = "azure-webjobs-hosts"
POISON_QUEUE = "webjobs-blobtrigger-poison"
HOST_ID = "devhost"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class BlobPath:
    """A trigger path such as ``batch-in/{name}.jsonl``: container, prefix and name pattern."""

    container: str
    prefix: str
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, path: str) -> BlobPath:
        container, sep, rest = resolve_setting_expressions(path).strip("/").partition("/")
        if not sep or "{" in container:
            raise ValueError(f"blob trigger path {path!r}: expected 'container/pattern'")
        parts, pos = [], 0
        for m in _PARAM.finditer(rest):
            parts.append(re.escape(rest[pos : m.start()]))
            parts.append(f"(?P<{m[1]}>.+?)")
            pos = m.end()
        parts.append(re.escape(rest[pos:]))
        first = _PARAM.search(rest)
        prefix = rest[: first.start()] if first else rest
        return cls(container, prefix, re.compile("".join(parts)))

    def match(self, blob_name: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(blob_name)
        return None if m is None else m.groupdict()


class BlobInputStream(func.InputStream):
    """``func.InputStream`` that streams from storage: nothing is read until the function reads.

    Reads download chunk by chunk (``CHUNK_BYTES``); ``readline`` and iteration buffer one
    chunk at a time, so a multi-gigabyte JSONL file never sits in memory whole.
    """

    def __init__(self, client: BlobClient, properties: BlobProperties) -> None:
        super().__init__()
        self._client = client
        self._props = properties
        self._etag = properties.etag
        self._downloader: StorageStreamDownloader[bytes] | None = None
        self._chunks: Iterator[bytes] | None = None
        self._buf = bytearray()
        self._eof = False
        self.bytes_downloaded = 0

    @property
    def name(self) -> str:
        return f"{self._client.container_name}/{self._client.blob_name}"

    @property
    def length(self) -> int:
        return int(self._props.size)

    @property
    def uri(self) -> str:
        return str(self._client.url)

    @property
    def blob_properties(self) -> dict[str, Any]:
        return {"ETag": self._etag, "Length": self.length, "ContentType": self._content_type()}

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._props.metadata or {})

    def _content_type(self) -> str | None:
        settings = self._props.content_settings
        return None if settings is None else settings.content_type

    def _fill(self) -> bool:
        if self._eof:
            return False
        if self._chunks is None:
            self._downloader = self._client.download_blob(
                etag=self._etag, match_condition=MatchConditions.IfNotModified
            )
            self._chunks = self._downloader.chunks()
        chunk = next(self._chunks, None)
        if chunk is None:
            self._eof = True
            return False
        self.bytes_downloaded += len(chunk)
        self._buf += chunk
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buf)
        while len(self._buf) < size and self._fill():
            pass
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    read1 = read

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = None if size is None or size < 0 else size
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0 or (limit is not None and len(self._buf) >= limit) or not self._fill():
                break
        end = len(self._buf) if nl < 0 else nl + 1
        if limit is not None:
            end = min(end, limit)
        out = bytes(self._buf[:end])
        del self._buf[:end]
        return out

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False


def receipt_name(function: str, container: str, blob: str, etag: str) -> str:
    return f"blobreceipts/{HOST_ID}/{function}/{etag.strip(chr(34))}/{container}/{blob}"


class BlobListener:
    def __init__(
        self,
        spec: FunctionSpec,
        container: ContainerClient,
        receipts: ContainerClient,
        poison: QueueClient,
        options: QueueOptions,
        invoker: Invoker,
        *,
        poll_s: float = 1.0,
    ) -> None:
        self.spec = spec
        self.path = BlobPath.parse(str(spec.trigger["path"]))
        self.container = container
        self.receipts = receipts
        self.poison = poison
        self.options = options
        self.invoker = invoker
        self.poll_s = poll_s
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, float] = {}
        self._slots = asyncio.Semaphore(options.batch_size)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._scan()
            except Exception as exc:  # storage down: keep scanning, say why
                log.warning("blob %s: scan failed: %s", self.path.container, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)

    async def drain(self, grace_s: float) -> None:
        if self.inflight:
            await asyncio.wait(set(self.inflight.values()), timeout=grace_s)

    def _receipt_prefix(self) -> str:
        return f"blobreceipts/{HOST_ID}/{self.spec.name}/"

    def _list(self) -> tuple[list[BlobProperties], dict[str, dict[str, str]]]:
        blobs = list(self.container.list_blobs(name_starts_with=self.path.prefix or None))
        receipts = {
            r.name: dict(r.metadata or {})
            for r in self.receipts.list_blobs(
                name_starts_with=self._receipt_prefix(), include=["metadata"]
            )
        }
        return blobs, receipts

    async def _scan(self) -> None:
        blobs, receipts = await asyncio.to_thread(self._list)
        now = time.monotonic()
        for props in blobs:
            binding = self.path.match(props.name)
            if binding is None:
                continue
            key = receipt_name(self.spec.name, self.path.container, props.name, str(props.etag))
            receipt = receipts.get(key, {})
            if receipt.get("status") in ("done", "poisoned") or key in self.inflight:
                continue
            if self._retry_at.get(key, 0.0) > now:
                continue
            attempts = int(receipt.get("attempts", "0"))
            task = asyncio.create_task(self._process(props, binding, key, attempts + 1))
            self.inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))

    def _forget(self, key: str, _task: asyncio.Task[None]) -> None:
        self.inflight.pop(key, None)

    def _write_receipt(self, key: str, status: str, attempts: int) -> None:
        self.receipts.upload_blob(
            key, b"", overwrite=True, metadata={"status": status, "attempts": str(attempts)}
        )

    async def _process(
        self, props: BlobProperties, binding: dict[str, str], key: str, attempt: int
    ) -> None:
        async with self._slots:
            t0 = time.perf_counter()
            if attempt > self.options.max_dequeue_count:
                await asyncio.to_thread(self._poison, props, key, attempt - 1)
                self._log(props, t0, attempt, "poisoned (attempts exceeded)")
                return
            await asyncio.to_thread(self._write_receipt, key, "pending", attempt)
            client = self.container.get_blob_client(props.name)
            stream = BlobInputStream(client, props)
            data = {**binding, "BlobTrigger": f"{self.path.container}/{props.name}"}
            try:
                await self.invoker.invoke(self.spec, stream, binding_data=data)
            except ResourceNotFoundError:
                self._log(props, t0, attempt, "skipped (blob deleted)")
                return
            except Exception as exc:  # the user's failure decides retry/poison
                log.error("function %s failed on blob %s: %r", self.spec.name, props.name, exc)
                if attempt >= self.options.max_dequeue_count:
                    await asyncio.to_thread(self._poison, props, key, attempt)
                    self._log(props, t0, attempt, "failed, poisoned")
                else:
                    delay = self.options.visibility_timeout_s
                    self._retry_at[key] = time.monotonic() + delay
                    self._log(props, t0, attempt, f"failed, retry in {delay:g}s")
                return
            await asyncio.to_thread(self._write_receipt, key, "done", attempt)
            self._retry_at.pop(key, None)
            self._log(props, t0, attempt, "success")

    def _poison(self, props: BlobProperties, key: str, attempts: int) -> None:
        """The host's poison message: which function, container, blob and ETag failed."""
        message = {
            "Type": "BlobTrigger",
            "FunctionId": f"Host.Functions.{self.spec.name}",
            "BlobType": "BlockBlob",
            "ContainerName": self.path.container,
            "BlobName": props.name,
            "ETag": str(props.etag),
        }
        body = json.dumps(message).encode("utf-8")
        self.poison.send_message(encode_message(body, self.options.message_encoding))
        self._write_receipt(key, "poisoned", attempts)

    def _log(self, props: BlobProperties, t0: float, attempt: int, outcome: str) -> None:
        log.info(
            "invocation function=%s trigger=blob blob=%s/%s attempt=%d duration_ms=%.1f outcome=%s",
            self.spec.name,
            self.path.container,
            props.name,
            attempt,
            (time.perf_counter() - t0) * 1000,
            outcome,
        )
