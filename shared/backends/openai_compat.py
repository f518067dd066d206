"""Backend kind ``openai``: any OpenAI-compatible server (vLLM, TGI Messages API, SGLang, Ollama).

A lean pass-through over httpx rather than the ``openai`` SDK, chosen by measurement
(README "Cold start"; bench/coldstart.py): the SDK's import alone costs about 0.6 s, and it
parses and re-serialises every chunk, while this forwards the endpoint's bytes unchanged —
fields the project does not know are preserved by construction — and reads only what it
needs (usage). There are no client-side retries here: the project's policy governs.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx2
from pydantic import Field

from shared.backends.http import HttpBackend
from shared.schemas import Operation
from shared.settings import BackendConfig


class OpenAIBackendConfig(BackendConfig):
    continuation_default = True  # vLLM: continue_final_message + add_generation_prompt false

    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    served_model: str | None = None

    def server_url(self) -> str:
        return self.base_url


class OpenAIBackend(HttpBackend[OpenAIBackendConfig]):
    """Forwards OpenAI API requests to ``base_url`` (which ends in ``/v1``)."""

    config_class = OpenAIBackendConfig

    def __init__(self, config: OpenAIBackendConfig) -> None:
        super().__init__(config)
        self._base = config.base_url.rstrip("/")
        # Parsed once: httpx would otherwise parse the URL string on every request.
        self._urls = {op: httpx2.URL(f"{self._base}/{op.value}") for op in Operation}
        self._models_url = httpx2.URL(f"{self._base}/models")

    def url(self, op: Operation, payload: dict[str, Any]) -> httpx2.URL:
        return self._urls[op]

    def models_url(self) -> httpx2.URL:
        return self._models_url

    def encode(self, op: Operation, payload: dict[str, Any], *, stream: bool) -> bytes:
        """The payload, asking for ``served_model`` when it has one. The answer names the
        model that produced it (as OpenAI names the snapshot), not the caller's alias."""
        served = self.config.served_model
        if served and served != payload.get("model"):
            payload = {**payload, "model": served}
        return json.dumps(payload).encode()
