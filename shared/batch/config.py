"""Batch settings (``INFER_BATCH_*``), validated on first use, never at import.

See docs/batch.md for the table. Times are seconds; sizes are bytes.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from shared.settings import CachedSettings, EnvSettings


class BatchSettings(EnvSettings):
    env_prefix: ClassVar[str] = "INFER_BATCH_"

    #: Files larger than this are split into shards of about this size (run as queue messages).
    shard_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    #: A longer line is an error line (``line_too_long``), never held whole in memory.
    max_line_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    #: Results held behind a slow line (finished, waiting for the lines before them to
    #: commit): dispatch pauses above this many bytes of them, as above the line window.
    max_held_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: How long one invocation may work before it hands the rest off (Azure's functionTimeout
    #: is 10 min on Consumption; Lambda's deadline comes from its context and wins if sooner).
    time_budget_s: float = Field(default=540.0, gt=0)
    #: Stop starting new lines this long before the deadline (room for in-flight lines).
    handoff_margin_s: float = Field(default=30.0, ge=0)
    #: Results are committed (part file + checkpoint) at least this often.
    checkpoint_s: float = Field(default=5.0, gt=0)
    #: status.json is refreshed at most this often while a batch runs.
    status_s: float = Field(default=3.0, gt=0)
    #: Adaptive concurrency: where it starts, its floor, and an optional ceiling below the
    #: backends' ``max_concurrency`` (0: the backends' total).
    start_concurrency: int = Field(default=8, ge=1)
    min_concurrency: int = Field(default=1, ge=1)
    max_concurrency: int = Field(default=0, ge=0)
    #: Growth stops while per-token latency is above this multiple of the best seen.
    latency_tolerance: float = Field(default=1.5, gt=1)
    #: Multiplicative back-off on 429/503 (new limit = limit * backoff).
    backoff: float = Field(default=0.7, gt=0, lt=1)
    #: Line retries for retryable errors; with the service's they share one budget of
    #: ``1 + INFER_MAX_RETRIES + line_retries`` tries (``shared.retry.unit_budget``).
    line_retries: int = Field(default=3, ge=0, le=20)
    #: Queue that carries shard and continuation messages.
    queue: str = "batch-shards"
    #: SQS queue URL for those messages on AWS.
    queue_url: str | None = None
    #: The caller id a batch file's lines are charged to (``INFER_LIMITS``), recorded in
    #: the run's plan when the file arrives (whoever may write the input container submits).
    caller: str = Field(default="batch", min_length=1)


_cached = CachedSettings(BatchSettings)
get_batch_settings = _cached.get
