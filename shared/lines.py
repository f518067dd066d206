"""Line-based wire formats: one incremental line splitter, one reader of SSE ``data:`` events.

``LineSplitter`` turns bytes that arrive in arbitrary pieces (HTTP chunks, SageMaker
payload parts, storage reads) into whole lines. Pieces split lines, and even UTF-8
characters, anywhere; only ``b"\\n"`` ends a line (``\\r\\n`` too: the ``\\r`` stays on
the line unless asked otherwise). Its users: batch input files (lines with their ends, so
byte offsets add up), SageMaker streams and the cache's stream assembler (lines without
ends), and backends that edit an SSE pass-through (blocks of whole lines).

``data_events`` reads the JSON-object events of an SSE text (a stream's tail, or what was
captured of it): the service charges the ``usage`` of the last one that has it, telemetry
reads ids, models and finish reasons from them.

Nothing heavy is imported here: the hot path and cold start both use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class LineSplitter:
    """Bytes in, whole lines out; what follows the last ``b"\\n"`` waits for the next piece.

    ``block`` returns every line a piece completes as one block, ``lines`` as a list;
    ``rest`` is the final line that had no newline (the stream ended), once.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # pieces of the line under way (no b"\n" in them)

    def block(self, data: bytes) -> bytes:
        """The lines ``data`` completes, as one block ending in ``b"\\n"`` (``b""``: none)."""
        cut = data.rfind(b"\n") + 1
        pending = self._pending
        if not cut:
            pending.append(data)
            return b""
        if pending:  # joined once: a long line over many pieces is not copied per piece
            pending.append(data[:cut])
            whole = b"".join(pending)
            pending.clear()
        else:
            whole = data[:cut]
        if cut < len(data):
            pending.append(data[cut:])
        return whole

    def lines(self, data: bytes, *, keep_ends: bool = False) -> list[bytes]:
        """The lines ``data`` completes: each with its ``b"\\n"`` when ``keep_ends``,
        otherwise without its line end (``\\n``, and the ``\\r`` of a ``\\r\\n``)."""
        whole = self.block(data)
        if not whole:
            return []
        if not keep_ends:
            parts = whole.split(b"\n")
            parts.pop()  # after the last b"\n": empty
            return [part.rstrip(b"\r") for part in parts]
        out = []
        at = 0
        while at < len(whole):
            nl = whole.index(b"\n", at) + 1
            out.append(whole[at:nl])
            at = nl
        return out

    def pending_size(self) -> int:
        """Bytes of the line under way (not yet ended by a newline)."""
        return sum(len(p) for p in self._pending)

    def drop_pending(self) -> None:
        """Forget the line under way (a line too long to keep)."""
        self._pending.clear()

    def rest(self, *, keep_ends: bool = False) -> bytes:
        """What came after the last newline (``b""`` when nothing did), and forget it;
        without ``keep_ends`` a trailing ``\\r`` is dropped, as ``lines`` does."""
        rest, self._pending = b"".join(self._pending), []
        return rest if keep_ends else rest.rstrip(b"\r")


def data_events(
    text: bytes, *, newest_first: bool = False, having: bytes = b""
) -> Iterator[dict[str, Any]]:
    """The JSON objects of the ``data: {...}`` lines of an SSE ``text``, in order (or
    newest first). ``having``: only lines containing these bytes are parsed (a cheap
    filter: ``b'"usage"'`` skips every content chunk). Lines that do not parse (a tail
    cut through an event) are skipped."""
    lines = text.split(b"\n")
    for line in reversed(lines) if newest_first else lines:
        if line.startswith(b"data: {") and having in line:
            try:
                value = json.loads(line[6:])
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


def usage_from_tail(tail: bytes) -> dict[str, Any] | None:
    """The ``usage`` of the last SSE event that carries one (``include_usage`` chunk)."""
    for event in data_events(tail, newest_first=True, having=b'"usage"'):
        usage = event.get("usage")
        if isinstance(usage, dict):
            return usage
    return None


def total_tokens(usage: dict[str, Any] | None) -> int | None:
    """``total_tokens`` of an OpenAI usage object (or prompt + completion), else None."""
    if not usage:
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt + completion
    return None
