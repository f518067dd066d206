"""TGI's native protocol: ``POST /generate`` and ``POST /generate_stream`` (SSE, no [DONE]).

Request ``{"inputs", "parameters": {max_new_tokens, stop, seed, details,
decoder_input_details, return_full_text, ...}}``. ``/generate`` answers ``{"generated_text",
"details"?}``; ``/generate_stream`` sends ``data:{"index","token":{"id","text","logprob",
"special"},"generated_text","details"}`` events, ``generated_text``/``details`` only on the
last. Errors are ``{"error", "error_type"}``: 422 validation, 429 overloaded, 500/503.
The Azure ML and SageMaker modules reuse :func:`generate` for their TGI payloads.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from . import text, wire
from .engine import ContextTooLong, GenerationRequest, NoCapacity, Overloaded
from .faults import Fault, FaultSpecError
from .runtime import TAG_HEADER, Runtime

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class TgiError(Exception):
    def __init__(self, status: int, message: str, error_type: str,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.body = {"error": message, "error_type": error_type}
        self.headers = headers

    def response(self) -> Response:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


#: Stream faults only the OpenAI protocol acts out.
TGI_UNSUPPORTED = ("stall", "slow_first_token", "malformed", "no_done")


def fault_error(fault: Fault) -> TgiError:
    if fault.type == "429":
        return TgiError(
            429, "Model is overloaded", "overloaded", wire.retry_headers(fault.retry_after)
        )
    if fault.type == "503":
        return TgiError(503, "Model is not ready (injected by gpusim)", "unhealthy",
                        wire.retry_headers(fault.retry_after))  # fmt: skip
    if fault.type == "context_length":
        return TgiError(422, "Input validation error: `inputs` tokens + `max_new_tokens` must "
                        "be <= 2048. Given: 4000 `inputs` tokens and 96 `max_new_tokens`",
                        "validation")  # fmt: skip
    if fault.type == "content_filter":
        return TgiError(400, "Input refused by the content policy (injected by gpusim)",
                        "validation")  # fmt: skip
    return TgiError(500, "Request failed during generation (injected by gpusim)",
                    "incomplete_generation")  # fmt: skip


def parse(rt: Runtime, body: Any, headers: Any) -> tuple[GenerationRequest, dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
        raise TgiError(422, "Failed to deserialize the JSON body: missing field `inputs`",
                       "validation")  # fmt: skip
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise TgiError(422, "`parameters` must be an object", "validation")
    max_new = params.get("max_new_tokens")
    if max_new is not None and (not isinstance(max_new, int) or max_new < 1):
        raise TgiError(422, "`max_new_tokens` must be strictly positive", "validation")
    stop = params.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise TgiError(422, "`stop` must be a list of strings", "validation")
    prompt = body["inputs"]
    prompt_tokens = text.count_tokens(prompt)
    try:
        rt.engine.check_context(prompt_tokens, max_new)
    except ContextTooLong as exc:
        raise TgiError(422, str(exc), "validation") from None
    seed = params.get("seed")
    request = GenerationRequest(
        model=rt.primary_model,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_new,
        stop=tuple(stop),
        seed=seed if isinstance(seed, int) else None,
        tag=headers.get(TAG_HEADER),
    )
    return request, params


def _finish(reason: str, stop: Any) -> str:
    return "length" if reason == "length" else ("stop_sequence" if stop else "eos_token")


def generate(rt: Runtime, body: Any, headers: Any, *, stream: bool) -> Response:
    """The TGI answer (JSON or SSE) for a decoded request body."""
    try:
        request, params = parse(rt, body, headers)
        fault = rt.faults.decide(headers)
    except TgiError as err:
        return err.response()
    except FaultSpecError as exc:
        return TgiError(422, str(exc), "validation").response()
    if fault is not None and fault.type in TGI_UNSUPPORTED:
        return TgiError(422, f"fault {fault.type!r} is acted out by the OpenAI protocol only",
                        "validation").response()  # fmt: skip
    if fault is not None and fault.status is not None:
        return fault_error(fault).response()

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        if fault is not None and fault.type in ("reset", "timeout"):
            await rt.connection_fault(fault, scope)
            return
        midstream = fault is not None and fault.type == "midstream"
        try:
            async with rt.engine.generate(request) as gen:
                if stream:
                    await _stream(rt, scope, send, gen, params, midstream)
                    return
                pieces = [p async for p in gen]
                assert gen.finish_reason is not None
                generated = "".join(pieces)
                out: dict[str, Any] = {
                    "generated_text": (request.prompt + generated)
                    if params.get("return_full_text") else generated
                }  # fmt: skip
                if params.get("details"):
                    details: dict[str, Any] = {
                        "finish_reason": _finish(gen.finish_reason, request.stop),
                        "generated_tokens": gen.completion_tokens,
                        "seed": request.seed,
                        "prefill": [],
                        "tokens": [{"id": i, "text": p, "logprob": -0.5, "special": False}
                                   for i, p in enumerate(pieces)],
                    }  # fmt: skip
                    if params.get("decoder_input_details"):
                        details["prefill"] = [
                            {"id": i, "text": "", "logprob": None}
                            for i in range(request.prompt_tokens)
                        ]
                    out["details"] = details
                payload = wire.dumps(out)
                await send(wire.json_start(200, payload))
                await send({"type": "http.response.body", "body": payload})
        except Overloaded as exc:
            busy = (503, "Model is loading", "loading") if isinstance(exc, NoCapacity) else (
                429, "Model is overloaded", "overloaded")  # fmt: skip
            err = TgiError(*busy, wire.retry_headers(exc.retry_after))
            await wire.send_json(send, err.status, err.body, err.headers)

    return wire.RawResponse(run)


async def _stream(rt: Runtime, scope: Scope, send: Send, gen: Any, params: dict[str, Any],
                  midstream: bool) -> None:  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    total = len(gen.plan.tokens)
    cut = max(0, min(rt.config.midstream_chunks, total - 1)) if midstream else -1
    pieces: list[str] = []
    i = 0
    async for piece in gen:
        if i == cut:
            wire.set_outcome(scope, "midstream")
            wire.abort_connection(scope, reset=False)
            return
        pieces.append(piece)
        last = i == total - 1
        event: dict[str, Any] = {
            "index": i,
            "token": {"id": i, "text": piece, "logprob": -0.5, "special": False},
            "generated_text": "".join(pieces) if last else None,
            "details": None,
        }
        if last:
            event["details"] = {
                "finish_reason": _finish(gen.finish_reason or "stop", gen.request.stop),
                "generated_tokens": gen.completion_tokens,
                "seed": gen.request.seed,
            }
        await send({"type": "http.response.body", "body": b"data:" + wire.dumps(event) + b"\n\n",
                    "more_body": True})  # fmt: skip
        i += 1
    if total == 0:  # nothing generated: one closing event still reports the finish
        closing = {"finish_reason": "eos_token", "generated_tokens": 0, "seed": None}
        token = {"id": 0, "text": "", "logprob": 0.0, "special": True}
        event = {"index": 0, "token": token, "generated_text": "", "details": closing}
        await send({"type": "http.response.body", "body": b"data:" + wire.dumps(event) + b"\n\n",
                    "more_body": True})  # fmt: skip
    await send({"type": "http.response.body", "body": b""})


async def read_json(request: Request) -> Any:
    try:
        return await wire.loads(await request.body())
    except ValueError:
        return None


def routes(rt: Runtime) -> list[BaseRoute]:
    async def generate_route(request: Request) -> Response:
        return generate(rt, await read_json(request), request.headers, stream=False)

    async def stream_route(request: Request) -> Response:
        return generate(rt, await read_json(request), request.headers, stream=True)

    return [
        Route("/generate", generate_route, methods=["POST"]),
        Route("/generate_stream", stream_route, methods=["POST"]),
    ]
