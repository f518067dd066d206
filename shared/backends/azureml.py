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
from typing import Any, Literal

import httpx2
from pydantic import Field

from shared.backends import tgi
from shared.backends.azure_auth import AZURE_ML_SCOPE
from shared.backends.base import ByteStream, Result
from shared.backends.http import HttpBackend, SSEPassThrough, error_from_response
from shared.context import Context
from shared.errors import BackendError, InferenceError
from shared.schemas import Operation
from shared.settings import AuthKind, BackendConfig

MODEL_ERROR_HEADER = "ms-azureml-model-error-statuscode"


class AzureMLBackendConfig(BackendConfig):
    provider = "azure.ai.inference"

    kind: Literal["azureml"]
    auth: AuthKind = "managed_identity"
    scoring_url: str = Field(pattern=r"^https?://")
    deployment: str | None = None
    payload: Literal["openai_chat", "tgi"] = "openai_chat"

    def server_url(self) -> str:
        return self.scoring_url


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


class _TgiStream(SSEPassThrough):
    """A TGI SSE answer translated into OpenAI chunks as it arrives."""

    def __init__(self, response: httpx2.Response, translator: tgi.StreamTranslator,
                 backend: str, ctx: Context) -> None:  # fmt: skip
        super().__init__(response, backend, ctx)
        self._translator = translator

    async def chunks(self) -> AsyncIterator[bytes]:
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


class AzureMLBackend(HttpBackend[AzureMLBackendConfig]):
    config_class = AzureMLBackendConfig
    request_id_header = "x-ms-client-request-id"
    token_scope = AZURE_ML_SCOPE

    def url(self, op: Operation, payload: dict[str, Any]) -> str:
        return self.config.scoring_url

    def headers(self, ctx: Context, *, stream: bool) -> dict[str, str]:
        headers = super().headers(ctx, stream=stream)
        if self.config.deployment:
            headers["azureml-model-deployment"] = self.config.deployment
        return headers

    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, backend: str
    ) -> InferenceError:
        return score_error(status, headers, body, backend)

    def encode(self, op: Operation, payload: dict[str, Any], *, stream: bool) -> bytes:
        native = self.config.payload == "tgi"
        return tgi.request_body(op, payload, stream=stream, native=native, backend=self.name,
                                chat_only="azureml, payload openai_chat")  # fmt: skip

    def decode(self, op: Operation, payload: dict[str, Any], content: bytes) -> Result:
        if self.config.payload == "tgi":
            return tgi.result(op, payload, content, self.name)
        return Result(content=content, backend=self.name)

    def stream(
        self, op: Operation, payload: dict[str, Any], response: httpx2.Response, ctx: Context
    ) -> ByteStream:
        if self.config.payload == "tgi":
            return _TgiStream(response, tgi.stream_translator(op, payload), self.name, ctx)
        return super().stream(op, payload, response, ctx)

    async def list_models(self, ctx: Context) -> list[str]:
        return [self.config.deployment] if self.config.deployment else []

    # check_ready: an online endpoint has no health route for callers (no ``models_url``),
    # so HttpBackend proves the token (or key) is obtainable.
