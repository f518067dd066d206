"""Job lines, ids and the public record shape."""

from __future__ import annotations

import pytest

from shared.jobs.model import JobRecord, MalformedMessage, idempotent_id, parse_line
from shared.schemas import Operation

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
    ],
)
def test_parse_line_rejects_bad_envelopes(data: dict[str, object], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_line(data)


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
