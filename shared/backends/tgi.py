"""TGI's native payload (``/generate``, ``/generate_stream``, SageMaker/Azure ML TGI
containers) converted to and from OpenAI shapes.

Requests: chat messages become one prompt string (``role: content`` lines, then
``assistant:``; the raw route applies no chat template, so prefer the Messages payload when
the container offers it), and the OpenAI sampling fields become TGI ``parameters``
(``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``) with
``return_full_text: false`` and ``details: true`` set explicitly.

Answers: ``generated_text`` and ``details`` become a ``chat.completion`` (or
``text_completion``) with ``usage`` (completion tokens from ``details.generated_tokens``,
prompt tokens from ``details.prefill`` when the server returned it); stream events become
``chat.completion.chunk`` SSE bytes, a usage chunk when asked, and ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from shared.backends.base import SSE_DONE, Result
from shared.errors import BackendError, BackendRejected
from shared.schemas import Operation

_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def chat_to_prompt(messages: list[dict[str, Any]]) -> str:
    lines = [f"{m.get('role', 'user')}: {_text(m.get('content'))}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def to_tgi(op: Operation, payload: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The TGI request body for an OpenAI chat or completions payload."""
    if op is Operation.CHAT:
        inputs = chat_to_prompt(list(payload.get("messages") or []))
    elif op is Operation.COMPLETIONS and isinstance(payload.get("prompt"), str):
        inputs = str(payload["prompt"])
    else:
        raise BackendRejected(
            f"the TGI payload supports chat and single-string completions, not {op.value}",
            status=400,
            code="unsupported_operation",
        )
    params: dict[str, Any] = {"return_full_text": False, "details": True}
    if not stream:
        params["decoder_input_details"] = True  # prefill tokens: the prompt token count
    max_new = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if max_new is not None:
        params["max_new_tokens"] = int(max_new)
    temperature = payload.get("temperature")
    if temperature is not None:
        if float(temperature) > 0:
            params["temperature"] = float(temperature)
            params["do_sample"] = True
        else:
            params["do_sample"] = False
    top_p = payload.get("top_p")
    if top_p is not None and 0 < float(top_p) < 1:
        params["top_p"] = float(top_p)
    stop = payload.get("stop")
    if stop:
        params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("seed") is not None:
        params["seed"] = int(payload["seed"])
    return {"inputs": inputs, "parameters": params, "stream": stream}


def _usage(details: dict[str, Any] | None, text: str) -> dict[str, int]:
    details = details or {}
    completion = int(details.get("generated_tokens") or 0)
    prefill = details.get("prefill")
    prompt = len(prefill) if isinstance(prefill, list) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def finish_reason(details: dict[str, Any] | None) -> str:
    reason = (details or {}).get("finish_reason")
    return _FINISH.get(str(reason), "stop")


def from_tgi(op: Operation, data: Any, model: str) -> dict[str, Any]:
    """An OpenAI answer from a TGI ``/generate`` answer (a dict, or a list of one)."""
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict) or not isinstance(data.get("generated_text"), str):
        raise BackendError("TGI answer has no 'generated_text'")
    text = data["generated_text"]
    details = data.get("details") if isinstance(data.get("details"), dict) else None
    reason = finish_reason(details)
    created = int(time.time())
    if op is Operation.COMPLETIONS:
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
            "usage": _usage(details, text),
        }  # fmt: skip
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
        "model": model,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": reason,
                     "message": {"role": "assistant", "content": text}}],
        "usage": _usage(details, text),
    }  # fmt: skip


class StreamTranslator:
    """TGI stream events in, OpenAI SSE bytes out (chat chunks or text_completion chunks)."""

    def __init__(self, op: Operation, model: str, include_usage: bool) -> None:
        self.op = op
        self.include_usage = include_usage
        chat = op is Operation.CHAT
        self._base: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._started = False
        self.finished = False
        self._usage: dict[str, int] | None = None

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        chunk = {**self._base, "choices": [{"index": 0, "logprobs": None, **choice}]}
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def _piece(self, text: str, reason: str | None) -> dict[str, Any]:
        if self.op is Operation.CHAT:
            return {"delta": {"content": text} if text or reason is None else {},
                    "finish_reason": reason}  # fmt: skip
        return {"text": text, "finish_reason": reason}

    def event(self, event: dict[str, Any]) -> bytes:
        """OpenAI SSE bytes for one decoded TGI stream event."""
        if "error" in event:
            raise BackendError(
                f"TGI stream error ({event.get('error_type') or 'generation'}): {event['error']}"
            )
        out = b""
        if not self._started and self.op is Operation.CHAT:
            out += self._chunk({"delta": {"role": "assistant", "content": ""},
                                "finish_reason": None})  # fmt: skip
        self._started = True
        raw_token = event.get("token")
        token: dict[str, Any] = raw_token if isinstance(raw_token, dict) else {}
        text = "" if token.get("special") else str(token.get("text") or "")
        details = event.get("details") if isinstance(event.get("details"), dict) else None
        if text:
            out += self._chunk(self._piece(text, None))
        if details is not None or event.get("generated_text") is not None:
            out += self._chunk(self._piece("", finish_reason(details)))
            self._usage = _usage(details, str(event.get("generated_text") or ""))
            self.finished = True
        return out

    def end(self) -> bytes:
        """The usage chunk (when asked) and ``[DONE]``; an unfinished stream is an error."""
        if not self.finished:
            raise BackendError("TGI stream ended before its last event")
        out = b""
        if self.include_usage and self._usage is not None:
            chunk = {**self._base, "choices": [], "usage": self._usage}
            out += b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        return out + SSE_DONE


def result(op: Operation, payload: dict[str, Any], content: bytes, backend: str) -> Result:
    """The OpenAI answer for a TGI container's ``content`` (a ``BackendError`` when it is
    not JSON)."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise BackendError(f"backend {backend!r} answered invalid JSON") from exc
    return Result.from_data(from_tgi(op, data, str(payload.get("model", ""))), backend=backend)


def stream_translator(op: Operation, payload: dict[str, Any]) -> StreamTranslator:
    """The translator for a streamed request's TGI events (usage chunk when asked for)."""
    include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    return StreamTranslator(op, str(payload.get("model", "")), include_usage)


def request_body(op: Operation, payload: dict[str, Any], *, stream: bool, native: bool,
                 backend: str, chat_only: str) -> bytes:  # fmt: skip
    """The body for a container that speaks TGI's native payload (``native``) or else
    OpenAI chat only (``chat_only`` names that payload in the refusal of other operations)."""
    if native:
        return json.dumps(to_tgi(op, payload, stream=stream)).encode()
    if op is not Operation.CHAT:
        raise BackendRejected(
            f"backend {backend!r} ({chat_only}) serves chat only",
            status=400,
            code="unsupported_operation",
        )
    return json.dumps(payload).encode()
