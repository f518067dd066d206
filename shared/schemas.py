"""Request validation for the OpenAI-compatible API.

Models validate what the project relies on and keep every other field (``extra="allow"``)
so that options the project does not know (``logprobs``, ``tools``, vendor extensions)
reach the model endpoint unchanged.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import InvalidRequest, PayloadTooLarge


class Operation(StrEnum):
    """An OpenAI API operation; the value is the path under ``/v1/``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


class _Open(BaseModel):
    # Built on first use: a function validates one operation and never pays for the others.
    model_config = ConfigDict(extra="allow", defer_build=True)


class ChatMessage(_Open):
    role: str = Field(min_length=1)
    content: str | list[Any] | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class _Generation(_Open):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=16)
    stop: str | list[str] | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]

    @model_validator(mode="after")
    def _nonempty(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)


_MODELS: dict[Operation, type[_Open]] = {
    Operation.CHAT: ChatCompletionRequest,
    Operation.COMPLETIONS: CompletionRequest,
    Operation.EMBEDDINGS: EmbeddingRequest,
}


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_request(
    op: Operation, raw: bytes, *, max_body_bytes: int, max_tokens_cap: int
) -> dict[str, Any]:
    """Validate a request body and return it as a dict with every original field kept.

    Raises ``PayloadTooLarge`` (413) or ``InvalidRequest`` (400) with ``param`` set to the
    offending field, OpenAI style.
    """
    if len(raw) > max_body_bytes:
        raise PayloadTooLarge(
            f"request body is {len(raw)} bytes; the limit is {max_body_bytes} bytes"
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    return validate_payload(op, data, max_tokens_cap=max_tokens_cap)


def validate_payload(op: Operation, data: Any, *, max_tokens_cap: int) -> dict[str, Any]:
    """Validate an already-decoded body (queue messages and batch lines come decoded)."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        parsed = _MODELS[op].model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = _param(tuple(first.get("loc", ())))
        raise InvalidRequest(f"{param or 'body'}: {first['msg']}", param=param or None) from None
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(parsed, field, None)
        if value is not None and value > max_tokens_cap:
            raise InvalidRequest(
                f"{field} is {value}; this endpoint allows at most {max_tokens_cap}",
                param=field,
            )
    return data
