"""Mid-stream recovery: a chat stream that broke after bytes reached the caller is continued
on the same or the next backend, so the caller receives one complete, seamless answer.

The pass-through reads nothing on the way: ``Sent`` only keeps the whole events that went
out. When a stream breaks (cut, stalled, malformed, ended early), ``read_partial`` parses
them once to learn what the caller already has, ``continuation`` builds the request that
asks a backend to go on from there (vLLM's ``continue_final_message``: the partial answer as
a final assistant message, ``add_generation_prompt`` false), and ``Continued`` rewrites what
that backend sends so it reads as the rest of the first answer: its role event dropped, the
first answer's ``id`` and ``created`` kept, and its usage made to cover what the caller
received (the partial answer's tokens count as output, not as prompt).

A partial answer can be continued only when it is plain text on one choice. A stream whose
sent part holds tool calls or reasoning, or several choices, or a completions stream, cannot
be: it is restarted elsewhere when nothing but its opening events reached the caller, and
otherwise ends with an OpenAI error event and no ``[DONE]``: never a truncated answer
presented as complete.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from shared.backends.base import ByteStream
from shared.errors import BackendError
from shared.schemas import Operation

#: The most bytes of sent events kept for a recovery; a longer answer is not recovered.
SENT_LIMIT = 4 << 20


class Sent:
    """The whole SSE events that reached the caller, kept (bounded) for a recovery."""

    __slots__ = ("data", "overflow")

    def __init__(self) -> None:
        self.data = bytearray()
        self.overflow = False

    def add(self, block: bytes) -> None:
        if len(self.data) + len(block) > SENT_LIMIT:
            self.overflow = True
        else:
            self.data += block


@dataclass
class Partial:
    """What the caller has of a chat answer."""

    id: Any = None
    created: Any = None
    role_sent: bool = False
    text: str = ""
    #: Content events the caller received (one per token on vLLM, TGI and gpusim).
    tokens: int = 0
    #: Only role and text on choice 0 went out: the answer can be continued.
    plain: bool = True
    #: Something beyond opening events (role, Azure's prompt filter) went out.
    started: bool = False


def events(block: bytes) -> list[bytes]:
    """The ``data`` payloads of a block of whole SSE events."""
    found = []
    for event in block.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                found.append(line[5:].strip())
    return found


def read_partial(sent: bytes) -> Partial:
    partial = Partial()
    for data in events(sent):
        if data == b"[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        note(partial, chunk)
    return partial


def note(partial: Partial, chunk: dict[str, Any]) -> None:
    """Add one forwarded chunk to what the caller has."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices:
        return  # Azure's prompt filter results, a usage chunk
    if partial.id is None:
        partial.id, partial.created = chunk.get("id"), chunk.get("created")
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        if choice.get("index", 0) != 0 or not isinstance(delta, dict):
            partial.plain, partial.started = False, True
            continue
        for key, value in delta.items():
            if key == "role":
                partial.role_sent = True
            elif key == "content":
                if value:
                    partial.text += str(value)
                    partial.tokens += 1
                    partial.started = True
            elif value:  # tool calls, reasoning, a refusal: not plain text
                partial.plain = False
                partial.started = True
        if choice.get("finish_reason") is not None:
            partial.started = True


def continuation(op: Operation, payload: dict[str, Any], partial: Partial) -> dict[str, Any] | None:
    """The request that completes the answer, or None when it cannot be completed.

    Nothing of the answer sent yet: the request itself (restarted, any backend). Plain text
    on a chat: the text as a partial assistant message to continue, ``max_tokens`` less what
    was received. Always with ``include_usage`` (``Continued`` strips it again if the caller
    did not ask)."""
    usage = {**(payload.get("stream_options") or {}), "include_usage": True}
    if not partial.started:
        return {**payload, "stream_options": usage}
    if op is not Operation.CHAT or not partial.plain or payload.get("n", 1) != 1:
        return None
    body: dict[str, Any] = {
        **payload,
        "messages": [
            *payload.get("messages", []),
            {"role": "assistant", "content": partial.text},
        ],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "stream_options": usage,
    }
    for field in ("max_completion_tokens", "max_tokens"):
        if isinstance(body.get(field), int):
            body[field] = max(1, body[field] - partial.tokens)
    return body


def _dumps(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Continued:
    """The continuing backend's stream, rewritten to read as the rest of the first answer.

    ``partial`` is updated as text goes out, so a continuation that breaks in turn is
    continued from everything the caller has. ``usage`` is the final usage, made to cover
    what the caller received, once the backend sent it."""

    def __init__(self, inner: ByteStream, partial: Partial, caller_wants_usage: bool) -> None:
        self._inner = inner
        self.backend = str(getattr(inner, "backend", ""))
        self._partial = partial
        self._before = partial.tokens
        self._wants_usage = caller_wants_usage
        self.usage: dict[str, Any] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for block in self._inner:
            out = [self._edit(data) for data in events(block)]
            kept = [event for event in out if event is not None]
            if kept:
                yield b"\n\n".join(kept) + b"\n\n"

    def _edit(self, data: bytes) -> bytes | None:
        if data == b"[DONE]":
            return b"data: [DONE]"
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BackendError(f"backend {self.backend!r} sent a malformed event") from None
        if not isinstance(chunk, dict):
            return _dumps(chunk)
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if isinstance(choices, list) and not choices:
            if not isinstance(usage, dict):
                return None  # Azure's prompt filter results: the caller had them at the start
            self.usage = self._covering(usage)
            return _dumps({**chunk, "usage": self.usage}) if self._wants_usage else None
        if not self._wants_usage:
            chunk.pop("usage", None)
        partial = self._partial
        if partial.id is not None:
            chunk["id"], chunk["created"] = partial.id, partial.created
        kept = []
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                if partial.role_sent:
                    delta.pop("role", None)
                    if delta.get("content") == "":
                        delta.pop("content")
                if not delta and choice.get("finish_reason") is None:
                    continue  # the opening role event: the caller has one
            kept.append(choice)
        if not kept:
            return None
        chunk["choices"] = kept
        note(partial, chunk)
        return _dumps(chunk)

    def _covering(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The continuation's usage, its prompt less the partial answer it was given, its
        output plus the tokens the caller had received before."""
        prompt, output = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(output, int):
            return usage
        before = self._before
        prompt, output = max(0, prompt - before), output + before
        return {**usage, "prompt_tokens": prompt, "completion_tokens": output,
                "total_tokens": prompt + output}  # fmt: skip

    async def aclose(self) -> None:
        await self._inner.aclose()
