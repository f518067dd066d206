"""Settings of the jobs API and the queue worker (``INFER_*``), read on first use.

- ``INFER_MAX_ATTEMPTS`` (5): deliveries before a job fails; equal to host.json
  ``maxDequeueCount`` and the SQS redrive ``maxReceiveCount``.
- ``INFER_JOB_TIMEOUT_S`` (300): time one Azure delivery may take (below functionTimeout).
- ``INFER_JOB_RETRY_BASE_S`` (2): first backoff when the endpoint gave no Retry-After.
- ``INFER_JOB_RETRY_MAX_S`` (300): longest backoff / Retry-After honoured between deliveries.
- ``INFER_JOB_MAX_DEFERS`` (20): throttled deliveries re-sent without using an attempt.
- ``INFER_JOBS_CONTAINER`` (jobs): container (Azure), key prefix (S3), folder (local).
- ``INFER_CALLBACK_SECRET`` (unset): HMAC-SHA256 key for ``X-Signature-256`` on callbacks.
- ``INFER_CALLBACK_TIMEOUT_S`` (5): per-try timeout of a callback POST.
- ``INFER_CALLBACK_ALLOW`` (unset): CIDRs and host names a ``callback_url`` may reach
  although not public (loopback, private, link-local); see ``shared.jobs.callback_guard``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from shared.settings import CachedSettings, EnvSettings

if TYPE_CHECKING:
    from shared.jobs.callback_guard import CallbackAllow

QUEUE_NAME = "inference-requests"
POISON_QUEUE_NAME = f"{QUEUE_NAME}-poison"


class JobSettings(EnvSettings):
    env_prefix: ClassVar[str] = "INFER_"

    max_attempts: int = Field(default=5, ge=1, le=1000)
    job_timeout_s: float = Field(default=300.0, gt=0)
    job_retry_base_s: float = Field(default=2.0, ge=0)
    job_retry_max_s: float = Field(default=300.0, ge=0)
    job_max_defers: int = Field(default=20, ge=0)
    #: How long a job may wait for capacity (a scale-out from zero, every backend full)
    #: without those waits counting as deferrals or tries.
    job_max_wait_s: float = Field(default=3600.0, ge=0)
    jobs_container: str = Field(default="jobs", pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")
    callback_secret: str | None = None
    callback_timeout_s: float = Field(default=5.0, gt=0)
    callback_allow: str = ""

    def callback_policy(self) -> CallbackAllow:
        from shared.jobs.callback_guard import CallbackAllow

        return CallbackAllow.parse(self.callback_allow)


_cached = CachedSettings(JobSettings)
get_job_settings = _cached.get
