"""Backend kind ``azure_openai``: an Azure OpenAI deployment, deployments URL or v1 URL.

- ``api_style: "deployments"`` (default): ``{endpoint}/openai/deployments/{deployment}/{op}
  ?api-version={api_version}``; the deployment is ``deployment`` or the requested model.
- ``api_style: "v1"``: ``{endpoint}/openai/v1/{op}`` with ``model`` set to the deployment.
- ``auth: managed_identity`` (default): ``Authorization: Bearer`` with an Entra token for
  ``https://cognitiveservices.azure.com/.default`` (see ``azure_auth``); ``auth: key``:
  ``api-key`` header from the setting ``api_key_setting`` names.

Answers pass through as Azure sends them (content filter results included); a stream's
leading ``prompt_filter_results`` chunk (``choices: []``, no usage) is dropped, since OpenAI
clients expect the first chunk to carry a choice. A blocked prompt (400 ``content_filter``)
reaches the caller as a 400 with Azure's ``innererror``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from shared.backends.azure_auth import COGNITIVE_SERVICES_SCOPE, send_authorized, token_source
from shared.backends.base import ByteStream, Result
from shared.backends.http import LineBlockStream, SSEPassThrough
from shared.context import Context
from shared.errors import InvalidRequest
from shared.schemas import Operation
from shared.settings import AzureOpenAIBackendConfig

DEFAULT_API_VERSION = "2024-10-21"


def is_prompt_filter_chunk(line: bytes) -> bool:
    """An SSE line carrying only Azure's prompt filter results (no choice, no usage)."""
    if not line.startswith(b"data:") or b"prompt_filter_results" not in line:
        return False
    try:
        data = json.loads(line[5:])
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("choices") == [] and not data.get("usage")


def drop_prompt_filter_events(block: bytes) -> bytes:
    """Whole SSE lines without the events that carry only prompt-filter results."""
    if b"prompt_filter_results" not in block:
        return block
    kept = b"\n".join(
        ln for ln in block.split(b"\n") if not is_prompt_filter_chunk(ln.rstrip(b"\r"))
    )
    return kept.replace(b"\n\n\n", b"\n\n").lstrip(b"\n")


#: What Azure accepts as a deployment name: letters, digits, ``.``, ``_``, ``-``, 64 at most.
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def deployment_name(model: object) -> str:
    """The caller's ``model`` as a deployment name for the URL path, or a 400 naming it (a
    ``/``, ``?``, ``%`` or ``..`` would otherwise reach another path on the resource)."""
    if not isinstance(model, str) or not DEPLOYMENT_NAME.fullmatch(model):
        raise InvalidRequest(
            "model: not a valid Azure OpenAI deployment name (1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit)",
            param="model",
        )
    return model


class AzureOpenAIBackend:
    def __init__(self, config: AzureOpenAIBackendConfig) -> None:
        self.name = config.name
        self.config = config
        self._base = config.endpoint.rstrip("/") + "/openai"
        self._api_version = config.api_version or DEFAULT_API_VERSION
        self._tokens = (
            token_source(config.client_id, COGNITIVE_SERVICES_SCOPE)
            if config.auth == "managed_identity"
            else None
        )

    def _url_and_body(self, op: Operation, payload: dict[str, Any]) -> tuple[str, bytes]:
        deployment = self.config.deployment or deployment_name(payload.get("model"))
        if self.config.api_style == "v1":
            return f"{self._base}/v1/{op.value}", json.dumps(
                {**payload, "model": deployment}
            ).encode()
        path = quote(deployment, safe="")
        url = f"{self._base}/deployments/{path}/{op.value}?api-version={self._api_version}"
        return url, json.dumps(payload).encode()

    def _headers(self, ctx: Context, *, stream: bool = False) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "x-ms-client-request-id": ctx.request_id,
        }
        if self.config.auth == "key":
            headers["api-key"] = self.config.api_key()
        return headers

    async def invoke(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        url, body = self._url_and_body(op, payload)
        response = await send_authorized(
            "POST", url, backend=self.name, ctx=ctx, timeout_s=self.config.timeout_s,
            headers=self._headers(ctx), tokens=self._tokens, body=body,
        )  # fmt: skip
        return Result(content=response.content, backend=self.name)

    async def open_stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ByteStream:
        url, body = self._url_and_body(op, payload)
        response = await send_authorized(
            "POST", url, backend=self.name, ctx=ctx, timeout_s=self.config.timeout_s,
            headers=self._headers(ctx, stream=True), tokens=self._tokens, body=body, stream=True,
        )  # fmt: skip
        return LineBlockStream(SSEPassThrough(response, self.name, ctx), drop_prompt_filter_events)

    async def list_models(self, ctx: Context) -> list[str]:
        if self.config.api_style == "v1":
            url = f"{self._base}/v1/models"
        else:
            url = f"{self._base}/models?api-version={self._api_version}"
        response = await send_authorized(
            "GET", url, backend=self.name, ctx=ctx, timeout_s=min(self.config.timeout_s, 10.0),
            headers=self._headers(ctx), tokens=self._tokens,
        )  # fmt: skip
        data = response.json().get("data", [])
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def check_ready(self, ctx: Context) -> None:
        await self.list_models(ctx)

    async def aclose(self) -> None:
        return None
