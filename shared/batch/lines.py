"""OpenAI Batch lines: read input lines (validated), write output and error lines.

Input ``{"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions" |
"/v1/embeddings", "body": {...}}``. Output ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"} | null, "error": {"code", "message"} | null}``.

Lines are identified by their byte offset in the input file: unique, stable across retries,
shards and restarts, and known without reading what comes before them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.errors import InferenceError, InvalidRequest
from shared.lines import LineSplitter
from shared.schemas import BadLine, Operation, parse_batch_line


@dataclass(frozen=True)
class Line:
    """One raw input line: ``start`` is its byte offset, ``end`` the offset after its newline."""

    start: int
    end: int
    data: bytes
    #: Longer than the batch's ``max_line_bytes``: its bytes were not kept (an error line).
    too_long: bool = False


@dataclass(frozen=True)
class Request:
    custom_id: str
    op: Operation
    body: dict[str, Any]
    traceparent: str | None = None  # the line's own trace context, when it carries one


#: A line that cannot be sent: ``code`` names the rule, ``custom_id`` is set when the line
#: had a readable one. The same error the shared Batch-line rules raise.
LineError = BadLine


def split_lines(
    chunks: Iterable[bytes], start: int, end: int | None, max_line: int | None = None
) -> Iterator[Line]:
    """Lines that *start* in ``[start, end)`` from ``chunks`` of the file read from ``start``.

    When ``start > 0`` the caller reads from ``start - 1``: a line starts at ``start`` only
    when the byte before it is a newline; otherwise the partial line belongs to the previous
    shard and is skipped. The last line may run past ``end`` (it is read to its newline).
    A line longer than ``max_line`` bytes is not kept in memory: it comes out as
    ``too_long`` with no data, its offsets exact.
    """
    pos = start - 1 if start > 0 else 0  # file offset of the next line
    skipping = start > 0
    splitter = LineSplitter()
    long_from: int | None = None  # start of a line too long to keep, being skipped
    for chunk in chunks:
        if long_from is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                pos += len(chunk)
                continue
            pos += nl + 1
            chunk = chunk[nl + 1 :]
            if skipping:
                skipping = False
            elif end is not None and long_from >= end:
                return
            else:
                yield Line(long_from, pos, b"", too_long=True)
            long_from = None
        for data in splitter.lines(chunk, keep_ends=True):
            line_start, pos = pos, pos + len(data)
            if skipping:
                skipping = False
                continue
            if end is not None and line_start >= end:
                return
            if max_line is not None and len(data) > max_line:
                yield Line(line_start, pos, b"", too_long=True)
                continue
            yield Line(line_start, pos, data)
        if max_line is not None and splitter.pending_size() > max_line:
            long_from = pos
            pos += splitter.pending_size()
            splitter.drop_pending()
    if long_from is not None:  # the file ended inside the long line
        if not skipping and (end is None or long_from < end):
            yield Line(long_from, pos, b"", too_long=True)
        return
    data = splitter.rest(keep_ends=True)
    if data and not skipping and (end is None or pos < end):
        yield Line(pos, pos + len(data), data)


def parse(line: Line, validate: Any) -> Request | None:
    """A request to send, ``None`` for a blank line, or ``LineError`` for a bad one.

    The line's rules are ``shared.schemas.parse_batch_line``'s, plus a batch's own: a
    ``custom_id``. ``validate(op, body)`` is the service's body validation (raises
    ``InvalidRequest``).
    """
    if line.too_long:
        raise LineError("line_too_long", "the line is longer than INFER_BATCH_MAX_LINE_BYTES")
    text = line.data.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # too deep a line is invalid too
        raise LineError("invalid_json", f"line is not valid JSON: {exc}") from None
    checked_line = parse_batch_line(data)
    cid = checked_line.custom_id
    if cid is None:
        raise LineError(
            "missing_custom_id", "'custom_id' must be a non-empty string", param="custom_id"
        )
    try:
        checked = validate(checked_line.op, checked_line.body)
    except InvalidRequest as err:
        raise LineError(
            "invalid_request", f"body: {err.message}", param=err.param, custom_id=cid
        ) from None
    return Request(cid, checked_line.op, checked, checked_line.traceparent)


def line_id(run_id: str, offset: int) -> str:
    return "batch_req_" + hashlib.sha256(f"{run_id}:{offset}".encode()).hexdigest()[:24]


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@dataclass
class Outcome:
    """The final word on one line: its output (or error) line and what it used."""

    offset: int
    end: int
    text: bytes = b""
    ok: bool = True
    counted: bool = True
    usage: dict[str, int] = field(default_factory=dict)


def success(
    run_id: str,
    line: Line,
    req: Request,
    body: dict[str, Any],
    request_id: str,
    cost: float | None = None,
) -> Outcome:
    out = {
        "id": line_id(run_id, line.start),
        "custom_id": req.custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
    }
    raw = body.get("usage")
    usage: dict[str, Any] = raw if isinstance(raw, dict) else {}
    counts = {
        k: int(usage[k])
        for k in ("prompt_tokens", "completion_tokens", "total_tokens")
        if isinstance(usage.get(k), int)
    }
    if cost:  # what the line cost, in micro-units (summed into the batch's status)
        from shared.pricing import micro

        counts["cost_micro"] = micro(cost)
    return Outcome(line.start, line.end, _dump(out), True, True, counts)


def failure(
    run_id: str,
    line: Line,
    custom_id: str | None,
    code: str,
    message: str,
    *,
    err: InferenceError | None = None,
    request_id: str | None = None,
) -> Outcome:
    response = None
    if err is not None:
        response = {"status_code": err.status, "request_id": request_id, "body": err.to_dict()}
    out = {
        "id": line_id(run_id, line.start),
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": f"{message} (input byte offset {line.start})"},
    }
    return Outcome(line.start, line.end, _dump(out), False, True)


def blank(line: Line) -> Outcome:
    return Outcome(line.start, line.end, b"", True, False)
