"""OpenAI protocol (as vLLM serves it): chat, completions, embeddings and models under /v1.

Wire details kept exact because the official SDKs parse them:
- errors are ``{"error": {"message", "type", "param", "code"}}`` with a matching status;
- a stream is ``data: {json}\\n\\n`` events with the same ``id``/``created`` on every chunk:
  (chat) a role delta, one content delta per token, a chunk with ``finish_reason``; with
  ``stream_options.include_usage`` every chunk carries ``"usage": null`` and one last chunk
  has ``"choices": []`` and the usage; then ``data: [DONE]``;
- /v1/completions defaults ``max_tokens`` to 16, as OpenAI and vLLM do.
Other protocol modules can reuse :class:`ApiError`-free pieces: the engine, ``wire`` and
:meth:`Runtime.connection_fault`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from . import text, wire
from .engine import (
    CompletionResult,
    ContextTooLong,
    Generation,
    GenerationRequest,
    NoCapacity,
    Overloaded,
)
from .faults import Fault, FaultSpecError
from .quota import OverQuota
from .runtime import TAG_HEADER, Runtime

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
DONE = b"data: [DONE]\n\n"
A = TypeVar("A")
R = TypeVar("R")


class ApiError(Exception):
    """An OpenAI error response; raise it anywhere in request parsing."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers

    def response(self) -> Response:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def overloaded_error(exc: Overloaded) -> ApiError:
    if isinstance(exc, NoCapacity):  # what a gateway in front of a loading server answers
        return ApiError(503, str(exc), type="service_unavailable", code="no_capacity",
                        headers=wire.retry_headers(exc.retry_after))  # fmt: skip
    return ApiError(429, str(exc), type="requests", code="rate_limit_exceeded",
                    headers=wire.retry_headers(exc.retry_after))  # fmt: skip


SAFE = {"filtered": False, "severity": "safe"}
CATEGORIES = ("hate", "self_harm", "sexual", "violence")


def content_filter_body() -> dict[str, Any]:
    """Azure OpenAI's 400 for a prompt its content filter refuses, reasons included."""
    return {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
            "content management policy. Please modify your prompt and retry.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    **dict.fromkeys(CATEGORIES, SAFE),
                    "violence": {"filtered": True, "severity": "high"},
                },
            },
        }
    }


class RawApiError(ApiError):
    """An error answer whose JSON body is given whole (another provider's envelope)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, str(body.get("error", {}).get("message", "")))
        self.body = body


def fault_error(fault: Fault) -> ApiError:
    if fault.type == "content_filter":
        return RawApiError(400, content_filter_body())
    if fault.type == "context_length":  # vLLM's words (OpenAI adds code context_length_exceeded)
        return ApiError(400, "This model's maximum context length is 2048 tokens. However, you "
                        "requested 4096 tokens in the messages. Please reduce the length of "
                        "the messages.", param="messages")  # fmt: skip
    if fault.type == "429":
        return ApiError(429, "Rate limit reached (injected by gpusim). Please retry later.",
                        type="requests", code="rate_limit_exceeded",
                        headers=wire.retry_headers(fault.retry_after))  # fmt: skip
    if fault.type == "503":
        return ApiError(503, "The server is overloaded or not ready yet (injected by gpusim).",
                        type="server_error", code="service_unavailable",
                        headers=wire.retry_headers(fault.retry_after))  # fmt: skip
    return ApiError(500, "The server had an error processing your request (injected by gpusim).",
                    type="server_error", code="internal_error")  # fmt: skip


# --- request parsing ---------------------------------------------------------------------
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


async def read_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The JSON object body; 413 past ``max_bytes`` (checked while reading), 400 if not JSON.

    Decoding a big body runs in a thread (``wire.loads``): the event loop stays free."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"Request body is {declared} bytes; the limit is {max_bytes}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"Request body exceeds the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    request.state.body_bytes = size
    try:
        body = await wire.loads(b"".join(chunks))
    except ValueError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return body


def model_of(rt: Runtime, body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if not rt.knows_model(model):
        raise ApiError(404, f"The model `{model}` does not exist.", param="model",
                       code="model_not_found")  # fmt: skip
    return model


def int_field(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError(400, f"'{name}' must be an integer >= {minimum}", param=name)
    return value


def stop_of(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise ApiError(400, "'stop' must be a string or a list of strings", param="stop")


def stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    if options and not stream:
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true",
                       param="stream_options")  # fmt: skip
    return stream, bool(options.get("include_usage"))


def single_choice(body: dict[str, Any]) -> None:
    if int_field(body, "n", 1) not in (None, 1):
        raise ApiError(400, "gpusim supports only n=1", param="n")


async def off_loop_if_big(request: Request, fn: Callable[[A], R], arg: A) -> R:
    """``fn(arg)`` inline for a small request, in a thread for a big one (tokenizing a
    multi-megabyte prompt takes a while)."""
    if getattr(request.state, "body_bytes", 0) <= wire.INLINE_JSON_BYTES:
        return fn(arg)
    return await asyncio.to_thread(fn, arg)


def decide_fault(rt: Runtime, request: Request) -> Fault | None:
    try:
        return rt.faults.decide(request.headers)
    except FaultSpecError as exc:
        raise ApiError(400, str(exc), param="x-gpusim-fail") from None


# --- output formats ----------------------------------------------------------------------
class Format(Protocol):
    """How one generation is written: buffered (``full``) or as SSE chunks."""

    def full(self, result: CompletionResult) -> dict[str, Any]: ...
    def head(self) -> bytes: ...
    def token(self, piece: str) -> bytes: ...
    def finish(self, reason: str) -> bytes: ...
    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes: ...


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


class _Chunks:
    """Precomputed chunk text around the one part that changes per token (cheap per token)."""

    def __init__(self, id_: str, obj: str, model: str, include_usage: bool) -> None:
        self.id = id_
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.prefix = (
            f'data: {{"id":"{id_}","object":"{obj}","created":{self.created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,'
        ).encode()
        self.suffix = (',"usage":null}\n\n' if include_usage else "}\n\n").encode()

    def event(self, choice_rest: str) -> bytes:
        return self.prefix + choice_rest.encode() + b"]" + self.suffix

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        if not self.include_usage:
            return b""
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "choices": [],
                 "usage": usage_dict(prompt_tokens, completion_tokens)}  # fmt: skip
        return b"data: " + wire.dumps(chunk) + b"\n\n"


class ChatFormat(_Chunks):
    """Chat chunks. With ``reasoning`` N (``--reasoning-tokens``) the first N tokens of an
    answer are reasoning, sent as ``reasoning_content`` deltas (vLLM's reasoning parser)
    and counted in ``completion_tokens`` like the rest."""

    def __init__(self, model: str, include_usage: bool, reasoning: int = 0) -> None:
        super().__init__(f"chatcmpl-{uuid.uuid4().hex}", "chat.completion.chunk", model,
                         include_usage)  # fmt: skip
        self.reasoning = reasoning
        self._sent = 0

    def full(self, result: CompletionResult) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if self.reasoning:
            words = result.text.split(" ")
            message["reasoning_content"] = " ".join(words[: self.reasoning])
            message["content"] = " ".join(words[self.reasoning :])
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "logprobs": None, "finish_reason": result.finish_reason,
                         "message": message}],
            "usage": usage_dict(result.prompt_tokens, result.completion_tokens),
        }  # fmt: skip

    def head(self) -> bytes:
        return self.event(
            '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
        )

    def token(self, piece: str) -> bytes:
        field = "content"
        if self._sent < self.reasoning:
            self._sent += 1
            field = "reasoning_content"
        return self.event(
            f'"delta":{{"{field}":{json.dumps(piece)}}},"logprobs":null,"finish_reason":null}}'
        )

    def finish(self, reason: str) -> bytes:
        return self.event(f'"delta":{{}},"logprobs":null,"finish_reason":"{reason}"}}')


class CompletionFormat(_Chunks):
    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__(f"cmpl-{uuid.uuid4().hex}", "text_completion", model, include_usage)

    def full(self, result: CompletionResult) -> dict[str, Any]:
        return {
            "id": self.id, "object": "text_completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": result.text, "logprobs": None,
                         "finish_reason": result.finish_reason}],
            "usage": usage_dict(result.prompt_tokens, result.completion_tokens),
        }  # fmt: skip

    def head(self) -> bytes:
        return b""

    def token(self, piece: str) -> bytes:
        return self.event(f'"text":{json.dumps(piece)},"logprobs":null,"finish_reason":null}}')

    def finish(self, reason: str) -> bytes:
        return self.event(f'"text":"","logprobs":null,"finish_reason":"{reason}"}}')

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return (
            super()
            .usage(prompt_tokens, completion_tokens)
            .replace(b'"chat.completion.chunk"', b'"text_completion"', 1)
        )


# --- running a generation ----------------------------------------------------------------
async def send_body(scope: Scope, send: Send, body: bytes, request_id: str,
                    fault: Fault | None, hang_s: float,
                    headers: dict[str, str] | None = None) -> None:  # fmt: skip
    """A 200 JSON answer, or the fault acted out on it: "midstream" sends half and closes
    the connection, "malformed" sends half as the whole body, "stall" sends the headers and
    then nothing, "slow_first_token" answers ``delay_s`` late."""
    kind = fault.type if fault is not None else None
    if kind == "slow_first_token" and fault is not None:
        await asyncio.sleep(fault.delay_s)
    if kind == "malformed":
        body = body[: len(body) // 2]
    await send(wire.json_start(200, body, {"x-request-id": request_id, **(headers or {})}))
    if kind == "midstream":
        half = body[: len(body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        wire.set_outcome(scope, "midstream")
        wire.abort_connection(scope, reset=False)
        return
    if kind == "stall":
        wire.set_outcome(scope, "stall")
        await asyncio.sleep(hang_s)
        wire.abort_connection(scope, reset=True)
        return
    await send({"type": "http.response.body", "body": body})


#: Stream faults acted out after some chunks; the others happen before or at the end.
_AFTER_CHUNKS = ("midstream", "stall", "malformed")


@dataclass
class GenerationCall:
    rt: Runtime
    request: GenerationRequest
    fmt: Format
    stream: bool
    fault: Fault | None
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        if self.fault is not None and self.fault.status is not None:
            return fault_error(self.fault).response()
        return wire.RawResponse(self.run)

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = self.fault
        if fault is not None and fault.type in ("reset", "timeout"):
            await self.rt.connection_fault(fault, scope)
            return
        try:
            async with self.rt.engine.generate(self.request) as gen:
                if not self.stream:
                    pieces = [piece async for piece in gen]
                    assert gen.finish_reason is not None
                    result = CompletionResult("".join(pieces), gen.finish_reason,
                                              gen.prompt_tokens, gen.completion_tokens)  # fmt: skip
                    body = wire.dumps(self.fmt.full(result))
                    await send_body(scope, send, body, self.request_id, fault,
                                    self.rt.config.hang_s, self.headers)  # fmt: skip
                    return
                await self.send_stream(scope, send, gen)
        except Overloaded as exc:
            err = overloaded_error(exc)
            await wire.send_json(send, err.status, err.body, err.headers)

    async def send_stream(self, scope: Scope, send: Send, gen: Generation) -> None:
        fmt, fault = self.fmt, self.fault
        kind = fault.type if fault is not None else None
        headers = [*SSE_HEADERS, (b"x-request-id", self.request_id.encode()),
                   *((k.encode(), v.encode()) for k, v in self.headers.items())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if kind == "slow_first_token" and fault is not None:
            await asyncio.sleep(fault.delay_s)
        cut = -1
        if kind in _AFTER_CHUNKS and fault is not None:
            after = self.rt.config.midstream_chunks if fault.after is None else fault.after
            cut = max(0, min(after, len(gen.plan.tokens) - 1))
        sent = 0
        head = fmt.head()
        async for piece in gen:
            chunk = fmt.token(piece)
            if sent == cut:
                if kind == "malformed":  # this token's event, cut in half: not JSON
                    chunk = chunk[: len(chunk) // 2] + b"\n\n"
                else:
                    break
            if sent == 0 and head:
                chunk = head + chunk
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += 1
        if kind in ("midstream", "stall") and cut >= 0:
            wire.set_outcome(scope, kind)
            if kind == "stall":
                await asyncio.sleep(self.rt.config.hang_s)
            wire.abort_connection(scope, reset=kind == "stall")
            return
        tail = fmt.finish(gen.finish_reason or "stop") + fmt.usage(
            gen.prompt_tokens, gen.completion_tokens
        )
        if sent == 0:
            tail = head + tail
        if kind == "no_done":
            wire.set_outcome(scope, "no_done")
            await send({"type": "http.response.body", "body": tail})
            return
        await send({"type": "http.response.body", "body": tail + DONE})


def partial_answer(rt: Runtime, body: dict[str, Any], messages: list[Any]) -> str | None:
    """vLLM's ``continue_final_message``: the final assistant message is a partial answer to
    continue (``add_generation_prompt`` must then be false), or None when not asked.

    A server started with ``--no-continue-final-message`` refuses the field as the OpenAI API
    refuses a parameter it does not know."""
    cont = body.get("continue_final_message", False)
    if cont is False:
        return None
    if not rt.config.continue_final_message:
        raise ApiError(400, "Unrecognized request argument supplied: continue_final_message",
                       param="continue_final_message")  # fmt: skip
    if cont is not True:
        raise ApiError(400, "'continue_final_message' must be a boolean",
                       param="continue_final_message")  # fmt: skip
    if body.get("add_generation_prompt", True) is not False:
        raise ApiError(400, "Cannot set both `continue_final_message` and "
                       "`add_generation_prompt` to True.")  # fmt: skip
    if messages[-1].get("role") != "assistant":
        raise ApiError(400, "continue_final_message requires the final message to be an "
                       "assistant message", param="messages")  # fmt: skip
    return text.message_text(messages[-1].get("content"))


def generation_request(
    request: Request, model: str, prompt: str, prompt_tokens: int, body: dict[str, Any],
    max_tokens: int | None, prefix: str = "",
) -> GenerationRequest:  # fmt: skip
    return GenerationRequest(
        model=model,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stop=stop_of(body),
        seed=int_field(body, "seed", -(2**63)),
        tag=request.headers.get(TAG_HEADER),
        prefix=prefix,
    )


def charge_quota(rt: Runtime, tokens: int) -> dict[str, str]:
    """The deployment's rate limit (``--tpm`` / ``--rpm``): its headers, or a 429."""
    try:
        return rt.quota.charge(tokens)
    except OverQuota as exc:
        raise ApiError(429, str(exc), type="requests", code="429", headers=exc.headers) from None


def check_context(rt: Runtime, prompt_tokens: int, max_tokens: int | None) -> None:
    try:
        rt.engine.check_context(prompt_tokens, max_tokens)
    except ContextTooLong as exc:
        raise ApiError(400, str(exc), param="messages") from None


def prompt_of(body: dict[str, Any]) -> str:
    """The one prompt of a completions request: a string, or tokens, or a list of one."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return " ".join(str(t) for t in prompt)
    raise ApiError(400, "'prompt' must be a string or a list of token ids (one prompt only)",
                   param="prompt")  # fmt: skip


def embedding_inputs(body: dict[str, Any], max_inputs: int) -> list[str]:
    value = body.get("input")
    one_tokens = isinstance(value, list) and value and all(type(t) is int for t in value)
    if isinstance(value, str) or one_tokens:
        value = [value]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'input' must be a non-empty string or list", param="input")
    if len(value) > max_inputs:
        raise ApiError(400, f"'input' has {len(value)} items; at most {max_inputs} are allowed",
                       param="input")  # fmt: skip
    texts = []
    for item in value:
        if item == "":
            raise ApiError(400, "'input' items must not be empty strings", param="input")
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and item and all(type(t) is int for t in item):
            texts.append(" ".join(str(t) for t in item))
        else:
            raise ApiError(400, "each 'input' item must be a string or token ids", param="input")
    return texts


def model_card(name: str, max_model_len: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "gpusim",
            "root": name, "parent": None, "max_model_len": max_model_len}  # fmt: skip


# --- routes ------------------------------------------------------------------------------
def routes(rt: Runtime) -> list[BaseRoute]:
    async def chat(request: Request) -> Response:
        try:
            body = await read_body(request, rt.config.max_body_bytes)
            model = model_of(rt, body)
            messages = body.get("messages")
            if not (isinstance(messages, list) and messages
                    and all(isinstance(m, dict) and m.get("role") in ROLES
                            for m in messages)):  # fmt: skip
                raise ApiError(400, "'messages' must be a non-empty list of {role, content}",
                               param="messages")  # fmt: skip
            single_choice(body)
            stream, include_usage = stream_flags(body)
            max_tokens = int_field(body, "max_completion_tokens", 1)
            if max_tokens is None:
                max_tokens = int_field(body, "max_tokens", 1)
            prefix = partial_answer(rt, body, messages)
            asked = messages[:-1] if prefix is not None else messages
            prompt, prompt_tokens = await off_loop_if_big(request, text.chat_prompt, asked)
            if prefix is not None:  # the partial answer is read as prompt tokens
                prompt_tokens += text.count_tokens(prefix)
            check_context(rt, prompt_tokens, max_tokens)
            gen = generation_request(request, model, prompt, prompt_tokens, body, max_tokens,
                                     prefix or "")  # fmt: skip
            fault = decide_fault(rt, request)
            limits = charge_quota(rt, prompt_tokens + (max_tokens or rt.config.max_output_tokens))
        except ApiError as err:
            return err.response()
        fmt = ChatFormat(model, include_usage, rt.config.reasoning_tokens)
        return GenerationCall(rt, gen, fmt, stream, fault, fmt.id, limits).response()

    async def completions(request: Request) -> Response:
        try:
            body = await read_body(request, rt.config.max_body_bytes)
            model = model_of(rt, body)
            prompt = prompt_of(body)
            single_choice(body)
            stream, include_usage = stream_flags(body)
            max_tokens = int_field(body, "max_tokens", 1)
            if "max_tokens" not in body:
                max_tokens = 16
            prompt_tokens = await off_loop_if_big(request, text.count_tokens, prompt)
            check_context(rt, prompt_tokens, max_tokens)
            gen = generation_request(request, model, prompt, prompt_tokens, body, max_tokens)
            fault = decide_fault(rt, request)
        except ApiError as err:
            return err.response()
        fmt = CompletionFormat(model, include_usage)
        return GenerationCall(rt, gen, fmt, stream, fault, fmt.id).response()

    async def embeddings(request: Request) -> Response:
        try:
            body = await read_body(request, rt.config.max_body_bytes)
            model = model_of(rt, body)
            texts = embedding_inputs(body, rt.config.max_embedding_inputs)
            encoding = body.get("encoding_format") or "float"
            if encoding not in ("float", "base64"):
                raise ApiError(400, "'encoding_format' must be 'float' or 'base64'",
                               param="encoding_format")  # fmt: skip
            dim = int_field(body, "dimensions", 1)
            if dim is not None and dim > rt.config.embedding_dim:
                raise ApiError(400, f"'dimensions' must be at most {rt.config.embedding_dim} "
                               "for this model", param="dimensions")  # fmt: skip
            fault = decide_fault(rt, request)
        except ApiError as err:
            return err.response()
        if fault is not None and fault.status is not None:
            return fault_error(fault).response()
        tag = request.headers.get(TAG_HEADER)

        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            if fault is not None and fault.type in ("reset", "timeout"):
                await rt.connection_fault(fault, scope)
                return
            try:
                vectors, tokens = await rt.engine.embed(model, texts, tag=tag, dimensions=dim)
            except Overloaded as exc:
                err = overloaded_error(exc)
                await wire.send_json(send, err.status, err.body, err.headers)
                return

            def encode() -> bytes:  # ~1 s of CPU for 2,048 vectors: kept off the loop
                data = [
                    {"object": "embedding", "index": i,
                     "embedding": text.encode_base64(v) if encoding == "base64" else v}
                    for i, v in enumerate(vectors)
                ]  # fmt: skip
                payload = {"object": "list", "data": data, "model": model,
                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
                return wire.dumps(payload)

            body = await asyncio.to_thread(encode)
            await send_body(scope, send, body, f"embd-{uuid.uuid4().hex}", fault, rt.config.hang_s)

        return wire.RawResponse(run)

    async def list_models(request: Request) -> Response:
        cards = [model_card(m, rt.config.max_model_len) for m in rt.config.served_models]
        return JSONResponse({"object": "list", "data": cards})

    async def get_model(request: Request) -> Response:
        name = request.path_params["model"]
        if not rt.knows_model(name):
            return ApiError(404, f"The model `{name}` does not exist.", param="model",
                            code="model_not_found").response()  # fmt: skip
        return JSONResponse(model_card(name, rt.config.max_model_len))

    return [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    ]
