"""Streams and cached answers: assemble a streamed answer, replay a cached one as SSE.

A cached answer is always the whole (non-streamed) OpenAI body: ``chat.completion`` or
``text_completion``. A streamed miss is assembled into that body as its chunks pass by;
a streamed hit is split back into several chunks (one per word), then the usage chunk when
the request asked for ``stream_options.include_usage``, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from typing import Any

from shared.backends.base import SSE_DONE
from shared.lines import LineSplitter
from shared.schemas import Operation

_WORDS = re.compile(r"\s*\S+\s*|\s+")


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class StreamAssembler:
    """Feed it the raw SSE bytes of one stream; ``result()`` is the whole answer or None.

    None when the stream did not end with ``[DONE]``, carried an error event, or holds
    something the cache cannot replay faithfully (logprobs).
    """

    def __init__(self, op: Operation) -> None:
        self.op = op
        self._lines = LineSplitter()
        self._done = False
        self._bad = False
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        if self._bad:
            return
        for line in self._lines.lines(chunk):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self._done = True
            return
        if self._done:
            return
        try:
            event = json.loads(data)
        except ValueError:
            self._bad = True
            return
        if not isinstance(event, dict) or "error" in event:
            self._bad = True
            return
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in event and event[key] is not None:
                self._meta.setdefault(key, event[key])
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        for choice in event.get("choices") or []:
            self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        if choice.get("logprobs"):
            self._bad = True
            return
        index = int(choice.get("index", 0))
        acc = self._choices.setdefault(index, {"content": [], "tools": {}, "finish": None})
        if choice.get("finish_reason") is not None:
            acc["finish"] = choice["finish_reason"]
        if self.op is Operation.COMPLETIONS:
            acc["content"].append(str(choice.get("text") or ""))
            return
        delta = choice.get("delta") or {}
        if delta.get("role"):
            acc["role"] = delta["role"]
        if delta.get("content"):
            acc["content"].append(str(delta["content"]))
        if delta.get("refusal"):
            acc.setdefault("refusal", []).append(str(delta["refusal"]))
        for call in delta.get("tool_calls") or []:
            slot = acc["tools"].setdefault(
                int(call.get("index", 0)), {"id": None, "type": "function", "name": [], "args": []}
            )
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            fn = call.get("function") or {}
            if fn.get("name"):
                slot["name"].append(fn["name"])
            if fn.get("arguments"):
                slot["args"].append(fn["arguments"])

    def result(self) -> dict[str, Any] | None:
        if self._bad or not self._done or not self._choices:
            return None
        if any(acc["finish"] is None for acc in self._choices.values()):
            return None
        choices = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            text = "".join(acc["content"])
            if self.op is Operation.COMPLETIONS:
                choices.append(
                    {"index": index, "text": text, "logprobs": None, "finish_reason": acc["finish"]}
                )
                continue
            message: dict[str, Any] = {"role": acc.get("role", "assistant"), "content": text}
            if "refusal" in acc:
                message["refusal"] = "".join(acc["refusal"])
            if acc["tools"]:
                message["tool_calls"] = [
                    {
                        "id": t["id"],
                        "type": t["type"],
                        "function": {"name": "".join(t["name"]), "arguments": "".join(t["args"])},
                    }
                    for _, t in sorted(acc["tools"].items())
                ]
                if not text:
                    message["content"] = None
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": acc["finish"],
                }
            )
        body: dict[str, Any] = {
            "id": self._meta.get("id", ""),
            "object": "text_completion" if self.op is Operation.COMPLETIONS else "chat.completion",
            "created": self._meta.get("created", 0),
            "model": self._meta.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in self._meta:
            body["system_fingerprint"] = self._meta["system_fingerprint"]
        if self._usage is not None:
            body["usage"] = self._usage
        return body


def words(text: str) -> list[str]:
    """``text`` in pieces of one word each (with the spaces around it); joined they are ``text``."""
    return _WORDS.findall(text) or [text]


def replay_events(body: dict[str, Any], op: Operation, include_usage: bool) -> list[bytes]:
    """The SSE events (``data: ...\\n\\n``) that stream ``body`` again, ``[DONE]`` last."""
    chat = op is Operation.CHAT
    base = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    if "system_fingerprint" in body:
        base["system_fingerprint"] = body["system_fingerprint"]
    events: list[bytes] = []

    def emit(choice: dict[str, Any]) -> None:
        chunk: dict[str, Any] = {**base, "choices": [choice]}
        if include_usage:
            chunk["usage"] = None
        events.append(b"data: " + _dump(chunk) + b"\n\n")

    for choice in body.get("choices") or []:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
            emit({"index": index, "delta": first, "logprobs": None, "finish_reason": None})
            for piece in words(message.get("content") or "") if message.get("content") else []:
                emit(
                    {
                        "index": index,
                        "delta": {"content": piece},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            if message.get("refusal"):
                emit(
                    {
                        "index": index,
                        "delta": {"refusal": message["refusal"]},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            for i, call in enumerate(message.get("tool_calls") or []):
                delta = {"tool_calls": [{"index": i, **call}]}
                emit({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})
            emit(
                {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason"),
                }
            )
        else:
            pieces = words(choice.get("text") or "")
            for n, piece in enumerate(pieces):
                last = n == len(pieces) - 1
                emit(
                    {
                        "index": index,
                        "text": piece,
                        "logprobs": None,
                        "finish_reason": choice.get("finish_reason") if last else None,
                    }
                )
    if include_usage:
        usage_chunk = {**base, "choices": [], "usage": body.get("usage")}
        events.append(b"data: " + _dump(usage_chunk) + b"\n\n")
    events.append(SSE_DONE)
    return events


async def replay(
    body: dict[str, Any], op: Operation, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    for event in replay_events(body, op, include_usage):
        yield event
