"""The job record and the request line it was made from.

A job is one OpenAI Batch line (``{"custom_id"?, "method": "POST", "url", "body"}``) run
asynchronously. Its record lives in the object store at ``jobs/{id}.json``; ``public()`` is
what ``GET /v1/jobs/{id}`` answers (docs/jobs.md). The other fields are internal:

- ``request_hash``: SHA-256 of the canonical line, to tell an idempotent retry (same key,
  same body) from a conflicting one (same key, different body).
- ``caller``: the API key id that created it (jobs are visible only to their caller when
  inbound keys are configured).
- ``lease``: who is running it and until when (wall-clock epoch seconds). A delivery runs the
  model only after writing its own lease with a conditional write, so two deliveries of one
  message never both call the model while a lease is live.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.schemas import BadLine, Operation, parse_batch_line

Status = Literal["queued", "running", "succeeded", "failed"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed"})

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class MalformedMessage(ValueError):
    """A line or queue message that can never succeed (not JSON, no/unknown url, ...)."""

    def __init__(self, reason: str, job_id: str | None = None, param: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id
        self.param = param


class Lease(BaseModel):
    model_config = ConfigDict(extra="ignore")

    token: str
    until: float


class JobRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    custom_id: str | None = None
    status: Status = "queued"
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    created_at: int
    completed_at: int | None = None
    #: What the answer cost (the serving backend's ``price`` x usage); None: unpriced.
    cost: float | None = None
    # internal
    url: str | None = None
    request_hash: str | None = None
    caller: str | None = None
    lease: Lease | None = None
    deferrals: int = 0
    #: Service tries charged to the job's retry budget (``Worker.budget``): a claim reserves
    #: its delivery's share, the result or release gives back what it did not use.
    tries: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "custom_id": self.custom_id,
            "status": self.status,
            "response": self.response,
            "error": self.error,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            **({"cost": self.cost} if self.cost is not None else {}),
        }

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()

    def seed(self, etag: str) -> dict[str, Any]:
        """What a queue message carries about the stored record (``"job"``), so the worker
        can claim it with one conditional write over ``etag`` without reading it first:
        every field the line itself does not carry, when not at its default."""
        fields = self.model_dump(mode="json", exclude_defaults=True, exclude=_LINE_FIELDS)
        return {"etag": etag, **fields}

    @classmethod
    def from_seed(cls, line: JobLine, job_id: str) -> tuple[JobRecord, str] | None:
        """The record and etag a message's ``"job"`` describes; None when it has none or it
        does not parse (the worker then reads the record instead)."""
        seed = line.seed
        if not seed or not isinstance(seed.get("etag"), str):
            return None
        fields = {k: v for k, v in seed.items() if k not in _LINE_FIELDS and k != "etag"}
        try:
            record = cls(id=job_id, custom_id=line.custom_id, url=line.url, **fields)
        except ValueError:
            return None
        return record, str(seed["etag"])

    @classmethod
    def loads(cls, data: bytes) -> JobRecord:
        return cls.model_validate_json(data)

    @classmethod
    def new(cls, line: JobLine, job_id: str, *, caller: str | None = None) -> JobRecord:
        return cls(
            id=job_id,
            custom_id=line.custom_id,
            created_at=int(time.time()),
            url=line.url,
            request_hash=line.digest(),
            caller=caller,
        )


_LINE_FIELDS = {"id", "custom_id", "url"}


@dataclass(frozen=True)
class JobLine:
    """A validated line: what the worker needs to run it (``body`` or ``body_ref``)."""

    op: Operation
    url: str
    body: dict[str, Any] | None
    id: str | None = None
    custom_id: str | None = None
    body_ref: str | None = None
    callback_url: str | None = None
    traceparent: str | None = None
    #: ``"job"`` of the message: the stored record's etag and fields (``JobRecord.seed``).
    seed: dict[str, Any] | None = None

    def digest(self) -> str:
        canon = {"custom_id": self.custom_id, "url": self.url, "body": self.body}
        text = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def message(self, job_id: str, seed: dict[str, Any] | None = None) -> dict[str, Any]:
        """The queue message for this line (``body_ref`` stays a reference), with the
        stored record's ``seed`` as ``"job"`` when given."""
        out: dict[str, Any] = {"id": job_id, "method": "POST", "url": self.url}
        if self.custom_id is not None:
            out["custom_id"] = self.custom_id
        if self.body_ref is not None:
            out["body_ref"] = self.body_ref
        else:
            out["body"] = self.body
        if self.callback_url:
            out["callback_url"] = self.callback_url
        if self.traceparent:
            out["traceparent"] = self.traceparent
        if seed is not None:
            out["job"] = seed
        return out


def _opt_str(data: dict[str, Any], name: str, job_id: str | None) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"'{name}' must be a non-empty string", job_id, name)
    return value


def parse_line(data: Any) -> JobLine:
    """Check a decoded line's envelope (the body itself is validated by the service): the
    OpenAI Batch line's rules (``shared.schemas.parse_batch_line``), then a job's own
    fields: ``id``, ``body`` or ``body_ref``, ``callback_url`` and the ``job`` seed."""
    raw_id = data.get("id") if isinstance(data, dict) else None
    job_id = raw_id if isinstance(raw_id, str) and JOB_ID.match(raw_id) else None
    if raw_id is not None and job_id is None:
        raise MalformedMessage(
            "'id' must be 1-128 characters of letters, digits, '_', '-', '.'", None, "id"
        )
    try:
        line = parse_batch_line(data)
    except BadLine as bad:
        raise MalformedMessage(bad.message, job_id, bad.param) from None
    body = line.body
    body_ref = _opt_str(data, "body_ref", job_id)
    if body_ref is None and not isinstance(body, dict):
        raise MalformedMessage("'body' must be a JSON object", job_id, "body")
    callback = _opt_str(data, "callback_url", job_id)
    if callback is not None and not callback.startswith(("http://", "https://")):
        raise MalformedMessage("'callback_url' must be an http(s) URL", job_id, "callback_url")
    seed = data.get("job")
    return JobLine(
        op=line.op,
        url=line.url,
        body=body if isinstance(body, dict) else None,
        id=job_id,
        custom_id=line.custom_id,
        body_ref=body_ref,
        callback_url=callback,
        traceparent=line.traceparent,
        seed=seed if isinstance(seed, dict) and job_id is not None else None,
    )


def derived_id(text: bytes) -> str:
    """Id of a queue message that carries none: stable across redeliveries of that message."""
    return "job_" + hashlib.sha256(text).hexdigest()[:32]


def idempotent_id(caller: str | None, key: str) -> str:
    """Id of a job submitted with ``Idempotency-Key``: one job per (caller, key)."""
    digest = hashlib.sha256(f"{caller or '-'}\0{key}".encode()).hexdigest()
    return "job_" + digest[:32]
