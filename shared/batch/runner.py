"""Batch entry points for the adapters: a new input file, and a shard/continuation message.

``start(path, ctx)``   blob created (Azure blob trigger / S3 ObjectCreated): plan the run,
                       then run it inline (one shard) or enqueue one message per shard.
``resume(message, ctx)`` a ``{"kind": "batch_shard", "name", "etag", "shard"}`` message from
                       the ``batch-shards`` queue: run (the rest of) that shard.

Each returns a short outcome string for logs; every path is idempotent, so redelivered
events and messages are harmless. When a shard runs out of time it enqueues its own
continuation (the same message) and returns cleanly. The shard that completes the set
(compare-and-swap on ``merge.json``) concatenates the parts into the output files, then
writes the final status with a conditional write: a batch is finalised exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.batch.config import BatchSettings, get_batch_settings
from shared.batch.engine import USAGE_KEYS, ShardRunner, make_limiter, new_checkpoint
from shared.batch.limiter import AdaptiveLimiter
from shared.batch.state import (
    IN,
    OUT,
    RunRef,
    Stores,
    create_json,
    errors_key,
    name_from_path,
    now,
    output_key,
    read_json,
    status_key,
    update_json,
)
from shared.blocking import run_blocking
from shared.context import Context
from shared.errors import ConfigError, InvalidRequest
from shared.lifecycle import Singleton
from shared.pricing import MICRO
from shared.service import Service, get_service
from shared.storage import ObjectNotFound

log = logging.getLogger("shared.batch")

MESSAGE_KIND = "batch_shard"
FINAL = ("completed", "failed")

Send = Callable[[dict[str, Any]], None]


def plan_shards(size: int, shard_bytes: int) -> list[list[int]]:
    """Byte ranges ``[start, end)``; a line belongs to the shard its first byte falls in."""
    if size <= shard_bytes:
        return [[0, size]]
    return [[s, min(s + shard_bytes, size)] for s in range(0, size, shard_bytes)]


def shard_message(run: RunRef, shard: int) -> dict[str, Any]:
    return {"kind": MESSAGE_KIND, "name": run.name, "etag": run.etag, "shard": shard}


class Batch:
    """The flow for one process: stores, service, queue sender, settings (built on first use)."""

    def __init__(
        self,
        *,
        stores: Stores | None = None,
        service: Service | None = None,
        send: Send | None = None,
        settings: BatchSettings | None = None,
        limiter: AdaptiveLimiter | None = None,
    ) -> None:
        self.stores = stores or Stores.default()
        self.service = service or get_service()
        self.settings = settings or get_batch_settings()
        self._send = send
        self.limiter = limiter

    def send(self, message: dict[str, Any]) -> None:
        if self._send is not None:
            self._send(message)
            return
        from shared.storage import provider
        from shared.storage.queues import get_queue

        if provider() == "s3" and not self.settings.queue_url:
            # Never fall back to INFER_QUEUE_URL: shard messages on the jobs queue would be
            # read by the wrong worker.
            raise ConfigError(
                "INFER_BATCH_QUEUE_URL: the SQS queue for batch shards is not set",
                param="INFER_BATCH_QUEUE_URL",
            )
        get_queue(self.settings.queue, url=self.settings.queue_url).send(message)

    def _limiter(self) -> AdaptiveLimiter:
        # One limiter per process: concurrent shards in one worker share the endpoint's view.
        if self.limiter is None:
            self.limiter = make_limiter(self.service, self.settings)
        return self.limiter

    # -- entry points ----------------------------------------------------------------------

    async def start(self, path: str, ctx: Context) -> str:
        name = name_from_path(path)
        if name is None:
            return f"ignored {path!r}: not batch-in/<name>.jsonl"
        info = await run_blocking(self.stores.inp.stat, f"{name}.jsonl")
        if info is None:
            return f"ignored {path!r}: it no longer exists"
        run = RunRef(name, info[1], info[0])
        status = await run_blocking(read_json, self.stores.out, status_key(name))
        if status and status[0].get("input_etag") == run.etag and status[0]["status"] in FINAL:
            return f"{name}: already {status[0]['status']}"
        shards = plan_shards(run.size, self.settings.shard_bytes)
        plan, _ = await run_blocking(
            create_json,
            self.stores.work,
            run.key("plan.json"),
            {"name": name, "etag": run.etag, "size": run.size, "shards": shards,
             "created_at": now(), "enqueued": False, "caller": self.settings.caller},
        )  # fmt: skip
        await run_blocking(self._begin_status, run, len(plan["shards"]))
        if len(plan["shards"]) == 1:
            return await self._run_shard(run, plan, 0, ctx)
        if not plan.get("enqueued"):
            for i in range(len(plan["shards"])):
                await run_blocking(self.send, shard_message(run, i))

            def mark(cur: dict[str, Any] | None) -> dict[str, Any] | None:
                return None if cur is None else {**cur, "enqueued": True}

            await run_blocking(update_json, self.stores.work, run.key("plan.json"), mark)
        return f"{name}: {len(plan['shards'])} shards enqueued"

    async def resume(self, message: dict[str, Any], ctx: Context) -> str:
        if message.get("kind") != MESSAGE_KIND:
            raise InvalidRequest(f"not a batch message: kind={message.get('kind')!r}")
        name, etag, shard = str(message["name"]), str(message["etag"]), int(message["shard"])
        status = await run_blocking(read_json, self.stores.out, status_key(name))
        if status and status[0].get("input_etag") == etag and status[0]["status"] in FINAL:
            return f"{name}: already {status[0]['status']}"
        info = await run_blocking(self.stores.inp.stat, f"{name}.jsonl")
        if info is None or info[1] != etag:
            return f"{name}: input replaced or deleted; shard {shard} of the old version dropped"
        run = RunRef(name, etag, info[0])
        found = await run_blocking(read_json, self.stores.work, run.key("plan.json"))
        if found is None:
            return f"{name}: no plan for this version (already finalised)"
        return await self._run_shard(run, found[0], shard, ctx)

    # -- a shard ---------------------------------------------------------------------------

    async def _run_shard(self, run: RunRef, plan: dict[str, Any], shard: int, ctx: Context) -> str:
        start, end = plan["shards"][shard]
        ckpt, etag = await run_blocking(
            create_json, self.stores.work, run.ckpt_key(shard), new_checkpoint(start, end)
        )
        if not ckpt.get("done"):
            nshards = len(plan["shards"])
            last_status = [0.0]
            interval = self.settings.status_s * nshards

            async def on_commit(_: dict[str, Any]) -> None:
                if time.monotonic() - last_status[0] >= interval:
                    last_status[0] = time.monotonic()
                    await run_blocking(self._progress_status, run, nshards)

            runner = ShardRunner(
                run, shard, ckpt, etag,
                stores=self.stores, service=self.service, limiter=self._limiter(),
                settings=self.settings, deadline=ctx.deadline, on_commit=on_commit,
                caller=str(plan.get("caller") or self.settings.caller),
            )  # fmt: skip
            try:
                result = await runner.run_unit()
            except ObjectNotFound:
                return f"{run.name}: input deleted while running"
            if result.outcome == "lost":
                return f"{run.name} shard {shard}: another invocation owns it; stopped"
            if result.outcome == "handoff":
                await run_blocking(self.send, shard_message(run, shard))
                await run_blocking(self._progress_status, run, nshards)
                return f"{run.name} shard {shard}: continued at byte {result.checkpoint['next']}"
        return await run_blocking(self._shard_done, run, plan, shard)

    def _shard_done(self, run: RunRef, plan: dict[str, Any], shard: int) -> str:
        nshards = len(plan["shards"])
        if nshards > 1:

            def add(cur: dict[str, Any] | None) -> dict[str, Any] | None:
                done = set((cur or {}).get("done", []))
                if shard in done and cur is not None:
                    return None
                return {"done": sorted(done | {shard})}

            update_json(self.stores.work, run.key("merge.json"), add)
            merged = read_json(self.stores.work, run.key("merge.json"))
            if merged is None or len(merged[0].get("done", [])) < nshards:
                self._progress_status(run, nshards)
                return f"{run.name} shard {shard}: done"
        return self._finalise(run, nshards)

    # -- status and finalisation -----------------------------------------------------------

    def _checkpoints(self, run: RunRef, nshards: int) -> list[dict[str, Any]]:
        out = []
        for i in range(nshards):
            found = read_json(self.stores.work, run.ckpt_key(i))
            if found is not None:
                out.append(found[0])
        return out

    def _set_status(self, run: RunRef, fields: dict[str, Any]) -> bool:
        def change(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            same = cur is not None and cur.get("input_etag") == run.etag
            if same and cur is not None and cur.get("status") in FINAL:
                return None
            base = cur if same and cur is not None else self._fresh_status(run)
            return {**base, **fields, "updated_at": now()}

        return update_json(self.stores.out, status_key(run.name), change) is not None

    def _fresh_status(self, run: RunRef) -> dict[str, Any]:
        t = now()
        return {
            "object": "batch",
            "id": f"batch_{run.run_id}",
            "input_file": f"{IN}/{run.input_key}",
            "input_etag": run.etag,
            "output_file": f"{OUT}/{output_key(run.name)}",
            "error_file": f"{OUT}/{errors_key(run.name)}",
            "status": "in_progress",
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": dict.fromkeys(USAGE_KEYS, 0),
            "cost": 0.0,
            "progress": {"bytes_done": 0, "bytes_total": run.size},
            "created_at": t,
            "started_at": t,
            "updated_at": t,
            "completed_at": None,
        }

    def _begin_status(self, run: RunRef, nshards: int) -> None:
        self._set_status(run, {"shards": nshards})

    def _totals(self, ckpts: list[dict[str, Any]]) -> dict[str, Any]:
        completed = sum(int(c["completed"]) for c in ckpts)
        failed = sum(int(c["failed"]) for c in ckpts)
        usage = {k: sum(int(c["usage"].get(k, 0)) for c in ckpts) for k in USAGE_KEYS}
        done = sum(int(c["next"]) - int(c["start"]) for c in ckpts)
        cost = sum(int(c.get("cost_micro", 0)) for c in ckpts)
        return {
            "request_counts": {"total": completed + failed, "completed": completed,
                               "failed": failed},
            "usage": usage,
            "cost": round(cost / MICRO, 6),
            "done_bytes": done,
        }  # fmt: skip

    def _progress_status(self, run: RunRef, nshards: int) -> None:
        totals = self._totals(self._checkpoints(run, nshards))
        self._set_status(
            run,
            {
                "request_counts": totals["request_counts"],
                "usage": totals["usage"],
                "cost": totals["cost"],
                "progress": {"bytes_done": totals["done_bytes"], "bytes_total": run.size},
            },
        )

    def _finalise(self, run: RunRef, nshards: int) -> str:
        found = read_json(self.stores.out, status_key(run.name))
        if found and found[0].get("input_etag") == run.etag and found[0]["status"] in FINAL:
            return f"{run.name}: already {found[0]['status']}"
        ckpts = self._checkpoints(run, nshards)
        if len(ckpts) < nshards or not all(c.get("done") for c in ckpts):
            return f"{run.name}: not every shard is done yet"
        outs = [p["out"] for c in ckpts for p in c["parts"] if p.get("out")]
        errs = [p["err"] for c in ckpts for p in c["parts"] if p.get("err")]
        self.stores.out.concat(output_key(run.name), self.stores.work, outs)
        self.stores.out.concat(errors_key(run.name), self.stores.work, errs)
        totals = self._totals(ckpts)
        t = now()
        wrote = self._set_status(
            run,
            {
                "status": "completed",
                "request_counts": totals["request_counts"],
                "usage": totals["usage"],
                "cost": totals["cost"],
                "progress": {"bytes_done": run.size, "bytes_total": run.size},
                "completed_at": t,
            },
        )
        if wrote:
            for key in self.stores.work.list(run.prefix):
                self.stores.work.delete(key)
        counts = totals["request_counts"]
        return f"{run.name}: completed ({counts['completed']} ok, {counts['failed']} failed)"


_batch = Singleton(Batch)


def get_batch() -> Batch:
    """The process's batch flow, built on first use and reused by warm invocations."""
    return _batch.get()


def invocation_context(
    *, remaining_s: float | None = None, request_id: str | None = None
) -> Context:
    """The invocation's deadline: the platform's remaining time, capped by the batch budget."""
    budget = get_batch_settings().time_budget_s
    seconds = budget if remaining_s is None else min(budget, remaining_s)
    return Context.with_timeout(seconds, request_id=request_id)
