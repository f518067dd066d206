"""Backend kind ``openai``: any OpenAI-compatible server (vLLM, TGI Messages API, SGLang, Ollama).

A lean pass-through over httpx rather than the ``openai`` SDK, chosen by measurement
(README "Cold start"; bench/coldstart.py): the SDK's import alone costs about 0.6 s, and it
parses and re-serialises every chunk, while this forwards the endpoint's bytes unchanged —
fields the project does not know are preserved by construction — and reads only what it
needs (usage). There are no client-side retries here: the project's policy governs.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from shared.backends.base import ByteStream, Result
from shared.backends.http import LineBlockStream, SSEPassThrough, send_json
from shared.context import Context
from shared.schemas import Operation
from shared.settings import OpenAIBackendConfig


def _model_rewriter(served: str, public: str) -> tuple[bytes, bytes, bytes, bytes]:
    dump = json.dumps
    return (
        f'"model":{dump(served)}'.encode(),
        f'"model":{dump(public)}'.encode(),
        f'"model": {dump(served)}'.encode(),
        f'"model": {dump(public)}'.encode(),
    )


class OpenAIBackend:
    """Forwards OpenAI API requests to ``base_url`` (which ends in ``/v1``)."""

    def __init__(self, config: OpenAIBackendConfig) -> None:
        self.name = config.name
        self.config = config
        self._base = config.base_url.rstrip("/")
        # Parsed once: httpx would otherwise parse the URL string on every request.
        self._urls = {op: httpx.URL(f"{self._base}/{op.value}") for op in Operation}

    def _headers(self, ctx: Context, *, stream: bool = False) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "x-request-id": ctx.request_id,
        }
        if self.config.auth == "key":
            headers["authorization"] = f"Bearer {self.config.api_key()}"
        return headers

    def _body(self, payload: dict[str, Any]) -> tuple[bytes, str | None]:
        public = payload.get("model")
        served = self.config.served_model
        if served and served != public:
            payload = {**payload, "model": served}
            return json.dumps(payload).encode(), str(public)
        return json.dumps(payload).encode(), None

    async def invoke(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        body, public = self._body(payload)
        response = await send_json(
            "POST",
            self._urls[op],
            backend=self.name,
            ctx=ctx,
            timeout_s=self.config.timeout_s,
            headers=self._headers(ctx),
            body=body,
        )
        content = response.content
        if public is not None and self.config.served_model:
            a, b, c, d = _model_rewriter(self.config.served_model, public)
            content = content.replace(a, b).replace(c, d)
        return Result(content=content, backend=self.name)

    async def open_stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ByteStream:
        body, public = self._body(payload)
        response = await send_json(
            "POST",
            self._urls[op],
            backend=self.name,
            ctx=ctx,
            timeout_s=self.config.timeout_s,
            headers=self._headers(ctx, stream=True),
            body=body,
            stream=True,
        )
        stream = SSEPassThrough(response, self.name, ctx)
        if public is not None and self.config.served_model:
            a, b, c, d = _model_rewriter(self.config.served_model, public)
            return LineBlockStream(stream, lambda block: block.replace(a, b).replace(c, d))
        return stream

    async def list_models(self, ctx: Context) -> list[str]:
        response = await send_json(
            "GET",
            f"{self._base}/models",
            backend=self.name,
            ctx=ctx,
            timeout_s=min(self.config.timeout_s, 10.0),
            headers=self._headers(ctx),
        )
        data = response.json().get("data", [])
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def check_ready(self, ctx: Context) -> None:
        await self.list_models(ctx)

    async def aclose(self) -> None:
        return None
