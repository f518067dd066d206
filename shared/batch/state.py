"""Where a batch keeps its state, and compare-and-swap updates of small JSON records.

Stores (``ObjectStore`` namespaces): ``batch-in`` (inputs), ``batch-out`` (results and
status), ``batch-work`` (checkpoints and part files, deleted when the batch completes).

A *run* is one version of one input: ``{name}.jsonl`` with its etag. A new upload of the
same name is a new run (new etag, new work prefix). Under ``batch-work/{name}/{run_id}/``:

    plan.json                 {"shards": [[start, end], ...], "enqueued": bool, ...}
    shard-00003.json          checkpoint {"next", "parts", "completed", "failed", "usage", "done"}
    parts/00003-<from>-<to>-<writer>.out.jsonl / .err.jsonl   results of lines [from, to)
                              written by one invocation (``writer``); only the parts a
                              checkpoint lists are committed, any other is ignored
    merge.json                {"done": [shard, ...]}: the last shard to add itself merges
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.storage import ObjectStore, PreconditionFailed, get_store

IN, OUT, WORK = "batch-in", "batch-out", "batch-work"
CAS_ATTEMPTS = 20


@dataclass(frozen=True)
class Stores:
    inp: ObjectStore
    out: ObjectStore
    work: ObjectStore

    @classmethod
    def default(cls) -> Stores:
        return cls(get_store(IN), get_store(OUT), get_store(WORK))


@dataclass(frozen=True)
class RunRef:
    name: str
    etag: str
    size: int

    @property
    def run_id(self) -> str:
        return hashlib.sha256(f"{self.name}\n{self.etag}".encode()).hexdigest()[:16]

    @property
    def input_key(self) -> str:
        return f"{self.name}.jsonl"

    @property
    def prefix(self) -> str:
        return f"{self.name}/{self.run_id}/"

    def key(self, leaf: str) -> str:
        return self.prefix + leaf

    def ckpt_key(self, shard: int) -> str:
        return self.key(f"shard-{shard:05d}.json")

    def part_key(self, shard: int, start: int, end: int, kind: str, writer: str) -> str:
        """Unique per invocation (``writer``): a duplicate invocation that loses the
        checkpoint's compare-and-swap can never overwrite the part the winner committed."""
        return self.key(f"parts/{shard:05d}-{start:014d}-{end:014d}-{writer}.{kind}.jsonl")


def output_key(name: str) -> str:
    return f"{name}.output.jsonl"


def errors_key(name: str) -> str:
    return f"{name}.errors.jsonl"


def status_key(name: str) -> str:
    return f"{name}.status.json"


def name_from_path(path: str) -> str | None:
    """``x`` from ``batch-in/x.jsonl`` (or ``x.jsonl``); ``None`` for anything else."""
    key = path[len(IN) + 1 :] if path.startswith(IN + "/") else path
    if not key.endswith(".jsonl") or len(key) <= len(".jsonl"):
        return None
    return key[: -len(".jsonl")]


def now() -> int:
    return int(time.time())


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def read_json(store: ObjectStore, key: str) -> tuple[dict[str, Any], str] | None:
    obj = store.get(key)
    if obj is None:
        return None
    data = json.loads(obj.data)
    return (data if isinstance(data, dict) else {}), obj.etag


def create_json(store: ObjectStore, key: str, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create ``key`` unless it exists; return what is there afterwards (ours or theirs)."""
    for _ in range(CAS_ATTEMPTS):
        try:
            return data, store.put(key, dumps(data), if_none_match=True)
        except PreconditionFailed:
            found = read_json(store, key)
            if found is not None:
                return found
    raise PreconditionFailed(f"{store.namespace}/{key}: could not create")


Update = Callable[[dict[str, Any] | None], dict[str, Any] | None]


def update_json(store: ObjectStore, key: str, change: Update) -> dict[str, Any] | None:
    """Compare-and-swap loop: ``change(current)`` returns the new record or ``None`` (no write).

    Returns the record as written (or ``None`` when ``change`` declined).
    """
    for _ in range(CAS_ATTEMPTS):
        found = read_json(store, key)
        current, etag = found if found is not None else (None, None)
        new = change(None if current is None else dict(current))
        if new is None:
            return None
        try:
            if etag is None:
                store.put(key, dumps(new), if_none_match=True)
            else:
                store.put(key, dumps(new), if_match=etag)
        except PreconditionFailed:
            continue
        return new
    raise PreconditionFailed(f"{store.namespace}/{key}: too many concurrent updates")
