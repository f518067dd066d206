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
from typing import Any, Literal
from urllib.parse import quote

import httpx2
from pydantic import Field

from shared.backends.azure_auth import COGNITIVE_SERVICES_SCOPE
from shared.backends.base import ByteStream
from shared.backends.http import HttpBackend, LineBlockStream
from shared.context import Context
from shared.errors import InvalidRequest
from shared.schemas import Operation
from shared.settings import AuthKind, BackendConfig

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIBackendConfig(BackendConfig):
    provider = "azure.ai.openai"

    kind: Literal["azure_openai"]
    auth: AuthKind = "managed_identity"
    endpoint: str = Field(pattern=r"^https?://")
    deployment: str | None = None
    api_version: str | None = None
    api_style: Literal["deployments", "v1"] = "deployments"

    def server_url(self) -> str:
        return self.endpoint


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


class AzureOpenAIBackend(HttpBackend[AzureOpenAIBackendConfig]):
    config_class = AzureOpenAIBackendConfig
    request_id_header = "x-ms-client-request-id"
    token_scope = COGNITIVE_SERVICES_SCOPE

    def __init__(self, config: AzureOpenAIBackendConfig) -> None:
        super().__init__(config)
        self._base = config.endpoint.rstrip("/") + "/openai"
        self._api_version = config.api_version or DEFAULT_API_VERSION

    def _deployment(self, payload: dict[str, Any]) -> str:
        return self.config.deployment or deployment_name(payload.get("model"))

    def url(self, op: Operation, payload: dict[str, Any]) -> str:
        deployment = self._deployment(payload)
        if self.config.api_style == "v1":
            return f"{self._base}/v1/{op.value}"
        path = quote(deployment, safe="")
        return f"{self._base}/deployments/{path}/{op.value}?api-version={self._api_version}"

    def encode(self, op: Operation, payload: dict[str, Any], *, stream: bool) -> bytes:
        if self.config.api_style == "v1":
            return json.dumps({**payload, "model": self._deployment(payload)}).encode()
        return json.dumps(payload).encode()

    def key_header(self, key: str) -> tuple[str, str]:
        return "api-key", key

    def models_url(self) -> str:
        if self.config.api_style == "v1":
            return f"{self._base}/v1/models"
        return f"{self._base}/models?api-version={self._api_version}"

    async def list_models(self, ctx: Context) -> list[str]:
        """The ``deployment`` when set (every name goes to it); otherwise the v1 API's model
        list. The deployments API has no data-plane call that lists deployments."""
        if self.config.deployment:
            return [self.config.deployment]
        if self.config.api_style != "v1":
            return []
        return await super().list_models(ctx)

    def stream(
        self, op: Operation, payload: dict[str, Any], response: httpx2.Response, ctx: Context
    ) -> ByteStream:
        return LineBlockStream(
            super().stream(op, payload, response, ctx), drop_prompt_filter_events
        )
