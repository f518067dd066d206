"""Batch input lines: byte-range splitting for shards, validation, output shapes."""

from __future__ import annotations

import json
import random

import pytest

from shared.batch.lines import Line, LineError, failure, parse, split_lines, success
from shared.batch.runner import plan_shards
from shared.errors import BackendRejected, InvalidRequest
from shared.schemas import Operation
from shared.service import Service
from shared.settings import Settings


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def lines_of(data: bytes, start: int, end: int | None, chunk: int = 7) -> list[Line]:
    base = max(start - 1, 0)
    return list(split_lines(chunked(data[base:], chunk), start, end))


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_shards_partition_the_lines_exactly(trailing_newline: bool) -> None:
    rng = random.Random(7)
    rows = [b"x" * rng.randint(0, 40) for _ in range(300)]
    data = b"\n".join(rows) + (b"\n" if trailing_newline else b"")
    expected = [(ln.start, ln.data) for ln in lines_of(data, 0, None)]
    assert len(expected) == len(rows)
    assert b"".join(d for _, d in expected) == data
    for shard_bytes in (1, 13, 64, 500, len(data)):
        got = [
            (ln.start, ln.data)
            for s, e in plan_shards(len(data), shard_bytes)
            for ln in lines_of(data, s, e, chunk=rng.randint(1, 50))
        ]
        assert got == expected, shard_bytes


def test_resuming_at_a_line_start_reads_from_that_line() -> None:
    data = b"aa\nbbb\ncccc\n"
    got = lines_of(data, 3, None)
    assert [(ln.start, ln.end, ln.data) for ln in got] == [(3, 7, b"bbb\n"), (7, 12, b"cccc\n")]


def _validate(op: Operation, body: object) -> dict[str, object]:
    service = Service(Settings(), router=None)  # type: ignore[arg-type]
    return service.validate(op, body)


def line(obj: object) -> Line:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return Line(10, 10 + len(raw), raw)


def test_a_good_line_becomes_a_request() -> None:
    req = parse(
        line({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "m", "input": "x"}}),
        _validate,
    )  # fmt: skip
    assert req is not None
    assert (req.custom_id, req.op, req.body["input"]) == ("a", Operation.EMBEDDINGS, "x")


def test_blank_lines_are_skipped() -> None:
    assert parse(line(b"  \r\n"), _validate) is None


@pytest.mark.parametrize(
    ("raw", "code", "custom_id"),
    [
        (b"{nope", "invalid_json", None),
        (b"[1]", "invalid_request", None),
        ({"url": "/v1/completions", "body": {}}, "missing_custom_id", None),
        ({"custom_id": "c", "method": "GET", "url": "/v1/completions"}, "invalid_method", "c"),
        ({"custom_id": "c", "url": "/v1/files", "body": {}}, "invalid_url", "c"),
        ({"custom_id": "c", "url": "/v1/completions", "body": {"model": "m"}}, "invalid_request",
         "c"),
        ({"custom_id": "c", "url": "/v1/chat/completions",
          "body": {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}},
         "invalid_request", "c"),
    ],
)  # fmt: skip
def test_bad_lines_say_why(raw: object, code: str, custom_id: str | None) -> None:
    with pytest.raises(LineError) as info:
        parse(line(raw), _validate)
    assert info.value.code == code
    assert info.value.custom_id == custom_id


def test_output_and_error_lines_have_the_openai_batch_shape() -> None:
    ln = line({"custom_id": "a"})
    req = parse(
        line({"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}),
        _validate,
    )
    assert req is not None
    ok = json.loads(success("run", ln, req, {"usage": {"total_tokens": 3}}, "rid").text)
    assert set(ok) == {"id", "custom_id", "response", "error"}
    assert ok["response"] == {
        "status_code": 200,
        "request_id": "rid",
        "body": {"usage": {"total_tokens": 3}},
    }
    assert ok["error"] is None and ok["id"].startswith("batch_req_")
    err = BackendRejected("blocked", status=400, code="content_filter")
    bad = failure("run", ln, "a", "content_filter", "blocked", err=err, request_id="r2")
    out = json.loads(bad.text)
    assert out["response"]["status_code"] == 400
    assert out["response"]["body"]["error"]["code"] == "content_filter"
    assert out["error"]["code"] == "content_filter"
    assert "byte offset 10" in out["error"]["message"]
    assert not bad.ok


def test_validation_errors_come_from_the_service_schema() -> None:
    with pytest.raises(InvalidRequest):
        _validate(Operation.CHAT, {"model": "m"})


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_lines_too_long_are_not_kept_and_shards_still_partition_exactly(
    trailing_newline: bool,
) -> None:
    rng = random.Random(11)
    rows = [b"y" * rng.choice([0, 5, 30, 200, 700]) for _ in range(120)]
    data = b"\n".join(rows) + (b"\n" if trailing_newline else b"")
    limit = 100

    def spans(start: int, end: int | None, chunk: int) -> list[tuple[int, int, bool, bytes]]:
        base = max(start - 1, 0)
        found = split_lines(chunked(data[base:], chunk), start, end, limit)
        return [(ln.start, ln.end, ln.too_long, ln.data) for ln in found]

    whole = spans(0, None, 9)
    assert len(whole) == len(rows)
    for (start, end, too_long, kept), row in zip(whole, rows, strict=True):
        assert too_long == (len(row) > limit)
        assert kept == (b"" if too_long else data[start:end])
        assert end - start in (len(row), len(row) + 1)
    assert all(len(k) <= limit for *_, k in whole)
    for shard_bytes in (50, 333, 1000):
        got = [x for s, e in plan_shards(len(data), shard_bytes)
               for x in spans(s, e, rng.randint(1, 64))]  # fmt: skip
        assert got == whole, shard_bytes


def test_a_line_too_long_is_an_error_line() -> None:
    with pytest.raises(LineError) as err:
        parse(Line(0, 10**7, b"", too_long=True), _validate)
    assert err.value.code == "line_too_long"
