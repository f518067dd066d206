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
from shared.schemas import Operation

URLS = {
    "/v1/chat/completions": Operation.CHAT,
    "/v1/completions": Operation.COMPLETIONS,
    "/v1/embeddings": Operation.EMBEDDINGS,
}


@dataclass(frozen=True)
class Line:
    """One raw input line: ``start`` is its byte offset, ``end`` the offset after its newline."""

    start: int
    end: int
    data: bytes


@dataclass(frozen=True)
class Request:
    custom_id: str
    op: Operation
    body: dict[str, Any]
    traceparent: str | None = None  # the line's own trace context, when it carries one


class LineError(Exception):
    """A line that cannot be sent: ``custom_id`` is set when the line had a readable one."""

    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.custom_id = custom_id


def split_lines(chunks: Iterable[bytes], start: int, end: int | None) -> Iterator[Line]:
    """Lines that *start* in ``[start, end)`` from ``chunks`` of the file read from ``start``.

    When ``start > 0`` the caller reads from ``start - 1``: a line starts at ``start`` only
    when the byte before it is a newline; otherwise the partial line belongs to the previous
    shard and is skipped. The last line may run past ``end`` (it is read to its newline).
    """
    pos = start - 1 if start > 0 else 0
    buf = bytearray()
    buf_at = pos  # file offset of buf[0]
    skipping = start > 0
    for chunk in chunks:
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line_end = buf_at + nl + 1
            data = bytes(buf[: nl + 1])
            del buf[: nl + 1]
            line_start = buf_at
            buf_at = line_end
            if skipping:
                skipping = False
                continue
            if end is not None and line_start >= end:
                return
            yield Line(line_start, line_end, data)
    if buf and not skipping and (end is None or buf_at < end):
        yield Line(buf_at, buf_at + len(buf), bytes(buf))


def parse(line: Line, validate: Any) -> Request | None:
    """A request to send, ``None`` for a blank line, or ``LineError`` for a bad one.

    ``validate(op, body)`` is the service's body validation (raises ``InvalidRequest``).
    """
    text = line.data.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # too deep a line is invalid too
        raise LineError("invalid_json", f"line is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LineError("invalid_request", "line must be a JSON object")
    custom_id = data.get("custom_id")
    cid = custom_id if isinstance(custom_id, str) and custom_id else None
    if cid is None:
        raise LineError("missing_custom_id", "custom_id must be a non-empty string")
    method = data.get("method", "POST")
    if method != "POST":
        raise LineError("invalid_method", f"method must be POST, got {method!r}", cid)
    url = data.get("url")
    op = URLS.get(str(url))
    if op is None:
        raise LineError("invalid_url", f"url must be one of {', '.join(URLS)}; got {url!r}", cid)
    body = data.get("body")
    if isinstance(body, dict) and body.get("stream"):
        raise LineError("invalid_request", "body.stream is not supported in a batch", cid)
    try:
        checked = validate(op, body)
    except InvalidRequest as err:
        raise LineError("invalid_request", f"body: {err.message}", cid) from None
    parent = data.get("traceparent")
    return Request(
        cid, op, checked, parent if isinstance(parent, str) and len(parent) < 256 else None
    )


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
    run_id: str, line: Line, req: Request, body: dict[str, Any], request_id: str
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
