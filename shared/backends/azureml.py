"""Backend kind ``azureml``: an Azure ML managed online endpoint (``POST …/score``).

- ``payload: "openai_chat"`` (default): the container speaks OpenAI chat (vLLM, TGI Messages
  API); bodies and SSE pass through.
- ``payload: "tgi"``: the container speaks TGI's native ``{"inputs", "parameters"}``;
  requests and answers are converted (``shared.backends.tgi``).
- ``deployment`` is sent as ``azureml-model-deployment`` (otherwise the endpoint's traffic
  split decides).
- ``auth: managed_identity`` (default): a bearer Entra token for
  ``https://ml.azure.com/.default`` (the endpoint's ``auth_mode: aad_token``); ``auth: key``:
  the endpoint key as bearer.

Errors: 408 (request timeout) and 429 (too many pending requests) are retryable; 424 means
the model container failed, and ``ms-azureml-model-error-statuscode`` tells how: a container
429/5xx is retryable, a container 4xx is the caller's request refused.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from shared.backends import tgi
from shared.backends.azure_auth import AZURE_ML_SCOPE, send_authorized, token_source
from shared.backends.base import ByteStream, Result
from shared.backends.http import SSEPassThrough, error_from_response, stream_error
from shared.context import Context
from shared.errors import BackendError, BackendRejected, InferenceError
from shared.schemas import Operation
from shared.settings import AzureMLBackendConfig

MODEL_ERROR_HEADER = "ms-azureml-model-error-statuscode"


def score_error(
    status: int, headers: Mapping[str, str], body: bytes, backend: str
) -> InferenceError:
    """Map a ``/score`` error; a 424 is judged by the container's own status
    (``ms-azureml-model-error-statuscode``), since 424 itself says only "the model failed"."""
    raw = headers.get(MODEL_ERROR_HEADER, "")
    if status != 424:
        return error_from_response(status, headers, body, backend)
    original = int(raw) if raw.isdigit() else 500
    err = error_from_response(original, headers, body, backend)
    err.message = f"model container of {backend!r} failed with {original}: {err.message}"
    return err


class _TgiStream:
    """A TGI SSE answer translated into OpenAI chunks as it arrives."""

    def __init__(self, response: httpx.Response, translator: tgi.StreamTranslator,
                 backend: str, ctx: Context) -> None:  # fmt: skip
        self._response = response
        self._translator = translator
        self._backend = backend
        self._ctx = ctx

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if not data or data == "[DONE]":
                    continue
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise BackendError(f"backend {self._backend!r} sent a bad event") from exc
                out = self._translator.event(event)
                if out:
                    yield out
            yield self._translator.end()
        except httpx.TransportError as exc:
            raise stream_error(exc, self._ctx, self._backend) from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class AzureMLBackend:
    def __init__(self, config: AzureMLBackendConfig) -> None:
        self.name = config.name
        self.config = config
        self._tokens = (
            token_source(config.client_id, AZURE_ML_SCOPE)
            if config.auth == "managed_identity"
            else None
        )

    def _headers(self, ctx: Context, *, stream: bool = False) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "x-ms-client-request-id": ctx.request_id,
        }
        if self.config.deployment:
            headers["azureml-model-deployment"] = self.config.deployment
        if self.config.auth == "key":
            headers["authorization"] = f"Bearer {self.config.api_key()}"
        return headers

    def _body(self, op: Operation, payload: dict[str, Any], *, stream: bool) -> bytes:
        if self.config.payload == "tgi":
            return json.dumps(tgi.to_tgi(op, payload, stream=stream)).encode()
        if op is not Operation.CHAT:
            raise BackendRejected(
                f"backend {self.name!r} (azureml, payload openai_chat) serves chat only",
                status=400,
                code="unsupported_operation",
            )
        return json.dumps(payload).encode()

    async def _score(self, body: bytes, ctx: Context, *, stream: bool) -> httpx.Response:
        return await send_authorized(
            "POST", self.config.scoring_url, backend=self.name, ctx=ctx,
            timeout_s=self.config.timeout_s, headers=self._headers(ctx, stream=stream),
            tokens=self._tokens, body=body, stream=stream, map_error=score_error,
        )  # fmt: skip

    async def invoke(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        response = await self._score(self._body(op, payload, stream=False), ctx, stream=False)
        if self.config.payload == "tgi":
            data = tgi.from_tgi(op, response.json(), str(payload.get("model", "")))
            return Result.from_data(data, backend=self.name)
        return Result(content=response.content, backend=self.name)

    async def open_stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ByteStream:
        response = await self._score(self._body(op, payload, stream=True), ctx, stream=True)
        if self.config.payload == "tgi":
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            translator = tgi.StreamTranslator(op, str(payload.get("model", "")), include_usage)
            return _TgiStream(response, translator, self.name, ctx)
        return SSEPassThrough(response, self.name, ctx)

    async def list_models(self, ctx: Context) -> list[str]:
        return [self.config.deployment] if self.config.deployment else []

    async def check_ready(self, ctx: Context) -> None:
        """An online endpoint has no health route for callers: prove the token is obtainable."""
        if self._tokens is not None:
            await self._tokens.token()
        else:
            self.config.api_key()

    async def aclose(self) -> None:
        return None
