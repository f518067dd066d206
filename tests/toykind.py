"""A backend kind that is not in the project: ONE module (this one) plus ONE registry line
(``registry.register("toy", "tests.toykind:ToyBackend")``) is all a new kind needs.

It speaks OpenAI to ``url`` (gpusim in the test), asks the endpoint for ``upstream_model``
whatever the caller named, and stamps its answers with ``system_fingerprint: "toy:<name>"``:
request translation, URL and response translation are the hooks it overrides.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from shared.backends.base import Result
from shared.backends.http import HttpBackend
from shared.schemas import Operation
from shared.settings import BackendConfig


class ToyBackendConfig(BackendConfig):
    provider = "toy.provider"

    kind: Literal["toy"]
    url: str = Field(pattern=r"^https?://")
    upstream_model: str = Field(min_length=1)

    def server_url(self) -> str:
        return self.url


class ToyBackend(HttpBackend[ToyBackendConfig]):
    config_class = ToyBackendConfig
    request_id_header = "x-toy-request-id"

    def url(self, op: Operation, payload: dict[str, Any]) -> str:
        return f"{self.config.url.rstrip('/')}/v1/{op.value}"

    def encode(self, op: Operation, payload: dict[str, Any], *, stream: bool) -> bytes:
        return json.dumps({**payload, "model": self.config.upstream_model}).encode()

    def decode(self, op: Operation, payload: dict[str, Any], content: bytes) -> Result:
        data = json.loads(content)
        data["system_fingerprint"] = f"toy:{self.name}"
        return Result.from_data(data, backend=self.name)
