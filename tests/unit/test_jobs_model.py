"""Job lines, ids and the public record shape."""

from __future__ import annotations

import json

import pytest

from shared.batch.lines import Line, LineError, parse
from shared.jobs.model import JobRecord, MalformedMessage, idempotent_id, parse_line
from shared.schemas import OPERATION_URLS, Operation

BODY = {"model": "m", "input": "x"}


def test_parse_line_maps_urls_to_operations() -> None:
    line = parse_line({"custom_id": "r1", "method": "POST", "url": "/v1/embeddings", "body": BODY})
    assert line.op is Operation.EMBEDDINGS and line.custom_id == "r1" and line.body == BODY
    assert line.message("job-1") == {
        "id": "job-1",
        "method": "POST",
        "url": "/v1/embeddings",
        "custom_id": "r1",
        "body": BODY,
    }


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"url": "/v1/embeddings"}, "'body' must be a JSON object"),
        ({"url": "/v1/embeddings", "body": BODY, "method": "GET"}, "method must be POST"),
        ({"url": "/v1/files", "body": BODY}, "unknown url"),
        ({"url": "/v1/embeddings", "body": BODY, "callback_url": "ftp://x"}, "callback_url"),
        ({"url": "/v1/embeddings", "body": BODY, "custom_id": 5}, "custom_id"),
        ({"url": "/v1/embeddings", "body": BODY, "method": "post"}, "method must be POST"),
        ({"url": "/v1/embeddings", "body": {**BODY, "stream": True}}, "stream"),
        ({"body": BODY}, "missing 'url'"),
    ],
)
def test_parse_line_rejects_bad_envelopes(data: dict[str, object], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_line(data)


@pytest.mark.parametrize(
    "line",
    [
        {"custom_id": "", "url": "/v1/embeddings", "body": BODY},
        {"custom_id": "c", "method": "post", "url": "/v1/embeddings", "body": BODY},
        {"custom_id": "c", "url": "/v1/files", "body": BODY},
        {"custom_id": "c", "url": "/v1/embeddings", "body": {**BODY, "stream": True}},
    ],
)
def test_a_job_and_a_batch_refuse_the_same_lines(line: dict[str, object]) -> None:
    """One set of rules for the OpenAI Batch line (shared.schemas.parse_batch_line)."""
    raw = json.dumps(line).encode()
    with pytest.raises(MalformedMessage) as job:
        parse_line(line)
    with pytest.raises(LineError) as batch:
        parse(Line(0, len(raw), raw), lambda op, body: body)
    assert job.value.reason == batch.value.message
    assert job.value.param is not None


def test_every_operation_has_one_url() -> None:
    assert OPERATION_URLS == {
        "/v1/chat/completions": Operation.CHAT,
        "/v1/completions": Operation.COMPLETIONS,
        "/v1/embeddings": Operation.EMBEDDINGS,
    }
    for url, op in OPERATION_URLS.items():
        assert parse_line({"url": url, "body": BODY}).op is op and op.url == url


def test_idempotent_ids_are_per_caller_and_key() -> None:
    assert idempotent_id("key0", "k") == idempotent_id("key0", "k")
    assert idempotent_id("key0", "k") != idempotent_id("key1", "k")
    assert idempotent_id(None, "k") != idempotent_id(None, "k2")


def test_public_shape_hides_internal_fields() -> None:
    line = parse_line({"url": "/v1/embeddings", "body": BODY})
    rec = JobRecord.new(line, "job-1", caller="key0")
    assert set(rec.public()) == {
        "id",
        "custom_id",
        "status",
        "response",
        "error",
        "attempts",
        "created_at",
        "completed_at",
    }
    assert JobRecord.loads(rec.dumps()) == rec
    other = parse_line({"url": "/v1/embeddings", "body": {**BODY, "input": "y"}})
    assert line.digest() != other.digest()
