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
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobProperties, ContainerClient
from azure.storage.queue import QueueClient

from tools.devhost.config import QueueOptions, resolve_setting_expressions
from tools.devhost.convert import (
    blob_input_arg,
    blob_metadata,
    blob_sdk_arg,
    is_sdk_type,
    resolve,
)
from tools.devhost.invoke import Invoker, annotation_of
from tools.devhost.registry import FunctionSpec
from tools.devhost.startup import MAX_RETRY_S, START_KWARGS, start_with_backoff
from tools.devhost.storage import DEFAULT_CONNECTION, encode_message

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
        start_retry_max_s: float = MAX_RETRY_S,
    ) -> None:
        self.spec = spec
        self.path = BlobPath.parse(str(spec.trigger["path"]))
        self.container = container
        self.receipts = receipts
        self.poison = poison
        self.options = options
        self.invoker = invoker
        self.poll_s = poll_s
        self.start_retry_max_s = start_retry_max_s
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, float] = {}
        self._slots = asyncio.Semaphore(options.batch_size)

    def start(self) -> None:
        """Create the containers and poison queue the listener needs (one attempt each)."""
        for container in (self.container, self.receipts):
            with contextlib.suppress(ResourceExistsError):
                container.create_container(**START_KWARGS)
        with contextlib.suppress(ResourceExistsError):
            self.poison.create_queue(**START_KWARGS)

    async def run(self, stop: asyncio.Event) -> None:
        what = f"blob listener for function {self.spec.name} (container {self.path.container})"
        if not await start_with_backoff(what, self.start, stop, max_s=self.start_retry_max_s):
            return
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
            data = {**binding, "BlobTrigger": f"{self.path.container}/{props.name}"}
            try:
                arg = await asyncio.to_thread(self._trigger_arg, props)
            except (ResourceNotFoundError, ResourceModifiedError):
                self._log(props, t0, attempt, "skipped (blob deleted or overwritten)")
                return
            try:
                await self.invoker.invoke(self.spec, arg, binding_data=data)
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

    def _trigger_arg(self, props: BlobProperties) -> Any:
        """The argument the worker passes: via the binding's own converter, from a Datum.

        An SDK-type parameter (``BlobClient``…) gets a client and no content. Otherwise the
        host sends the whole blob, as deployed, and ``func.InputStream`` holds it in memory.
        """
        client = self.container.get_blob_client(props.name)
        trigger_metadata = blob_metadata(
            container=self.path.container,
            name=props.name,
            uri=str(client.url),
            properties=_properties(props),
            metadata=dict(props.metadata or {}),
        )
        annotation = resolve(annotation_of(self.spec.func, str(self.spec.trigger["name"])))
        if is_sdk_type(annotation):
            return blob_sdk_arg(
                annotation,
                binding=self.spec.trigger_type,
                connection=str(self.spec.trigger.get("connection") or DEFAULT_CONNECTION),
                container=self.path.container,
                name=props.name,
                trigger_metadata=trigger_metadata,
            )
        content = _download(client, props)
        return blob_input_arg(annotation, content, trigger_metadata)

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


def _download(client: BlobClient, props: BlobProperties) -> bytes:
    """The whole blob version the listener saw (the host sends it whole to the worker)."""
    downloader = client.download_blob(
        etag=props.etag, match_condition=MatchConditions.IfNotModified
    )
    return downloader.readall()


def _properties(props: BlobProperties) -> dict[str, Any]:
    settings = props.content_settings
    modified = props.last_modified
    return {
        "BlobType": "BlockBlob",
        "ContentLength": int(props.size),
        "Length": int(props.size),
        "ContentType": None if settings is None else settings.content_type,
        "ETag": str(props.etag),
        "LastModified": None if modified is None else modified.isoformat(),
    }
