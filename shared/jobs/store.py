"""Job records over an ``ObjectStore``: ``{id}.json`` in the jobs namespace.

Every write that changes a job's state is conditional (``if_none_match`` to create,
``if_match`` to update), so concurrent writers never overwrite each other's work: a loser
gets ``PreconditionFailed``, re-reads and decides again.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.blocking import run_blocking
from shared.jobs.model import JobRecord
from shared.storage import ObjectStore, PreconditionFailed, get_store

__all__ = ["JobStore", "PreconditionFailed", "Versioned", "get_job_store"]


@dataclass(frozen=True)
class Versioned:
    record: JobRecord
    etag: str


class JobStore:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def key(job_id: str) -> str:
        return f"{job_id}.json"

    def get(self, job_id: str) -> Versioned | None:
        found = self.store.get(self.key(job_id))
        if found is None:
            return None
        return Versioned(JobRecord.loads(found.data), found.etag)

    def create(self, record: JobRecord) -> Versioned:
        """Write a new record; ``PreconditionFailed`` when the id exists."""
        etag = self.store.put(self.key(record.id), record.dumps(), if_none_match=True)
        return Versioned(record, etag)

    def replace(self, record: JobRecord, etag: str) -> Versioned:
        """Write ``record`` over the version ``etag``; ``PreconditionFailed`` if it changed."""
        new = self.store.put(self.key(record.id), record.dumps(), if_match=etag)
        return Versioned(record, new)

    def delete(self, job_id: str) -> None:
        self.store.delete(self.key(job_id))

    async def aget(self, job_id: str) -> Versioned | None:
        return await run_blocking(self.get, job_id)

    async def acreate(self, record: JobRecord) -> Versioned:
        return await run_blocking(self.create, record)

    async def areplace(self, record: JobRecord, etag: str) -> Versioned:
        return await run_blocking(self.replace, record, etag)


def get_job_store() -> JobStore:
    """The process's job store (namespace ``INFER_JOBS_CONTAINER``, default ``jobs``)."""
    from shared.jobs.config import get_job_settings

    return JobStore(get_store(get_job_settings().jobs_container))
