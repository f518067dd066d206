"""Request validation for the OpenAI-compatible API.

Models validate what the project relies on and keep every other field (``extra="allow"``)
so that options the project does not know (``logprobs``, ``tools``, vendor extensions)
reach the model endpoint unchanged.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidRequest


class Operation(StrEnum):
    """An OpenAI API operation; the value is the path under ``/v1/``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"

    @property
    def url(self) -> str:
        """The operation's path as a batch line or a job names it: ``/v1/embeddings``."""
        return "/v1/" + self.value


#: The ``url`` of an OpenAI Batch line (or a job) -> its operation: the one such map.
OPERATION_URLS: dict[str, Operation] = {op.url: op for op in Operation}


class _Open(BaseModel):
    # Built on first use: a function validates one operation and never pays for the others.
    model_config = ConfigDict(extra="allow", defer_build=True)


# Strict scalars: what is validated is what is forwarded (no "5" -> 5, no True -> 1).
Int = Annotated[int, Field(strict=True)]
Num = Annotated[float, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
#: A model name: 1-256 visible ASCII characters (no spaces or control characters). It
#: names counters and log fields, so its size and alphabet are bounded.
ModelName = Annotated[str, Field(strict=True, min_length=1, max_length=256,
                                 pattern=r"^[\x21-\x7e]+$")]  # fmt: skip

#: OpenAI's documented limits (chat, completions, embeddings API reference).
MAX_JSON_DEPTH = 64
MAX_STOP = 4
MAX_TOOLS = 128
MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_BEST_OF = 20
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_TOKENS = 8192
MAX_EMBEDDING_REQUEST_TOKENS = 300_000
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(_Open):
    type: Str = Field(min_length=1)
    text: Str | None = None


class FunctionCall(_Open):
    name: Str = Field(min_length=1)
    arguments: Str


class ToolCall(_Open):
    id: Str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: Role
    content: Str | list[ContentPart] | None = None
    name: Str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Str | None = None


class StreamOptions(_Open):
    include_usage: Bool = False


class FunctionDefinition(_Open):
    name: Str = Field(pattern=FUNCTION_NAME)
    description: Str | None = None
    parameters: dict[str, Any] | None = None
    strict: Bool | None = None


class CustomDefinition(_Open):
    name: Str = Field(min_length=1)
    description: Str | None = None


class Tool(_Open):
    type: Literal["function", "custom"]
    function: FunctionDefinition | None = None
    custom: CustomDefinition | None = None


class NamedFunction(_Open):
    name: Str = Field(min_length=1)


class AllowedTools(_Open):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(min_length=1)


class ToolChoiceObject(_Open):
    type: Literal["function", "custom", "allowed_tools"]
    function: NamedFunction | None = None
    custom: NamedFunction | None = None
    allowed_tools: AllowedTools | None = None


class ResponseFormat(_Open):
    type: Str = Field(min_length=1)
    json_schema: dict[str, Any] | None = None


Penalty = Annotated[float, Field(strict=True, ge=-2, le=2)]


class _Generation(_Open):
    model: ModelName
    stream: Bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Int | None = Field(default=None, ge=1)
    max_completion_tokens: Int | None = Field(default=None, ge=1)
    temperature: Num | None = Field(default=None, ge=0, le=2)
    top_p: Num | None = Field(default=None, ge=0, le=1)
    n: Int | None = Field(default=None, ge=1, le=MAX_N)
    stop: Str | Annotated[list[Str], Field(max_length=MAX_STOP)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(strict=True, ge=-100, le=100)]] | None = None
    seed: Int | None = None
    user: Str | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: Bool | None = None
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Generation):
    prompt: Any  # checked by _check_prompt: four shapes, one clear error
    logprobs: Int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: Int | None = Field(default=None, ge=1, le=MAX_BEST_OF)
    echo: Bool | None = None
    suffix: Str | None = None


class EmbeddingRequest(_Open):
    model: ModelName
    input: Any  # checked by _check_embedding_input (fast on large token arrays)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Int | None = Field(default=None, ge=1)
    user: Str | None = None


_MODELS: dict[Operation, type[_Open]] = {
    Operation.CHAT: ChatCompletionRequest,
    Operation.COMPLETIONS: CompletionRequest,
    Operation.EMBEDDINGS: EmbeddingRequest,
}

#: Type names pydantic puts in an error's location for union members ("str", "list[str]",
#: "ToolChoiceObject", "literal['none','auto']"): not part of the field path.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})
_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _FIELD.match(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """(param, message) of the most specific error: the deepest location wins, so a union
    reports what is wrong inside the member that came closest, not "not a string"."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    best = max(
        errors,
        key=lambda e: (len(_param(tuple(e.get("loc", ())))), not e["type"].endswith("_type")),
    )
    return _param(tuple(best.get("loc", ()))), str(best["msg"])


def _is_token_ids(value: Any) -> bool:
    """A list of integers >= 0 (bool is not an int here), checked at C speed."""
    return isinstance(value, list) and (
        not value or (set(map(type, value)) == {int} and min(value) >= 0)
    )


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt) or _is_token_ids(prompt):
            return
        for i, item in enumerate(prompt):
            if not (_is_token_ids(item) and item):
                raise InvalidRequest(
                    "prompt: expected a string, a list of strings, a list of token ids "
                    "(integers >= 0) or a list of such lists",
                    param=f"prompt[{i}]" if isinstance(item, list) else "prompt",
                )
        return
    raise InvalidRequest(
        "prompt: expected a non-empty string list or token list, or a string", param="prompt"
    )


def _check_embedding_input(value: Any) -> None:
    """OpenAI's rules: a string, or up to 2,048 strings, or token arrays; no empty string,
    at most 8,192 tokens per input and 300,000 tokens per request."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input: must not be an empty string", param="input")
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            "input: expected a non-empty string, list of strings or list of token ids",
            param="input",
        )
    if type(value[0]) is int:  # one input as token ids
        items: list[Any] = [value]
        one = True
    else:
        items, one = value, False
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(
                f"input: {len(items)} inputs; at most {MAX_EMBEDDING_INPUTS} per request",
                param="input",
            )
    if set(map(type, items)) == {str} and all(items):  # the common case, at C speed
        return
    total = 0
    kind = type(items[0])
    for i, item in enumerate(items):
        where = "input" if one else f"input[{i}]"
        if type(item) is not kind and isinstance(item, str | list):
            raise InvalidRequest(f"{where}: strings and token lists cannot be mixed", param=where)
        if isinstance(item, str):
            if not item:
                raise InvalidRequest(f"{where}: must not be an empty string", param=where)
            continue
        if not (isinstance(item, list) and item and _is_token_ids(item)):
            raise InvalidRequest(
                f"{where}: expected a non-empty string or a non-empty list of token ids "
                "(integers >= 0), all inputs of one kind",
                param=where,
            )
        if len(item) > MAX_EMBEDDING_INPUT_TOKENS:
            raise InvalidRequest(
                f"{where}: {len(item)} tokens; at most {MAX_EMBEDDING_INPUT_TOKENS} per input",
                param=where,
            )
        total += len(item)
    if total > MAX_EMBEDDING_REQUEST_TOKENS:
        raise InvalidRequest(
            f"input: {total} tokens in all; at most {MAX_EMBEDDING_REQUEST_TOKENS} per request",
            param="input",
        )


def _check_chat(req: ChatCompletionRequest) -> None:
    """Rules across fields that OpenAI enforces with a 400."""
    for i, msg in enumerate(req.messages):
        if msg.role == "tool" and not msg.tool_call_id:
            raise InvalidRequest(
                f"messages[{i}].tool_call_id: a 'tool' message needs the id of the call it answers",
                param=f"messages[{i}].tool_call_id",
            )
        if msg.tool_calls is not None and msg.role != "assistant":
            raise InvalidRequest(
                f"messages[{i}].tool_calls: only 'assistant' messages carry tool calls",
                param=f"messages[{i}].tool_calls",
            )
        if isinstance(msg.content, list):
            for j, part in enumerate(msg.content):
                if part.type == "text" and part.text is None:
                    raise InvalidRequest(
                        f"messages[{i}].content[{j}].text: a 'text' part needs 'text'",
                        param=f"messages[{i}].content[{j}].text",
                    )
    for i, tool in enumerate(req.tools or ()):
        if getattr(tool, tool.type) is None:
            raise InvalidRequest(
                f"tools[{i}].{tool.type}: a '{tool.type}' tool needs '{tool.type}'",
                param=f"tools[{i}].{tool.type}",
            )
    choice = req.tool_choice
    if choice is not None and choice != "none" and not req.tools:
        raise InvalidRequest(
            "tool_choice: only allowed when 'tools' are given", param="tool_choice"
        )
    if isinstance(choice, ToolChoiceObject) and getattr(choice, choice.type) is None:
        raise InvalidRequest(
            f"tool_choice.{choice.type}: needed when 'type' is '{choice.type}'",
            param=f"tool_choice.{choice.type}",
        )
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest(
            "top_logprobs: only allowed when 'logprobs' is true", param="top_logprobs"
        )
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidRequest(
            "response_format.json_schema: needed when 'type' is 'json_schema'",
            param="response_format.json_schema",
        )


def _check_depth(data: Any) -> None:
    """Refuse JSON nested deeper than ``MAX_JSON_DEPTH`` (no recursion: a stack of nodes).

    A container whose members are all scalars (a token list) is skipped at C speed.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node
        kinds = set(map(type, children))
        if dict in kinds or list in kinds:
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def loads(raw: bytes | str) -> Any:
    """``json.loads`` whose failures (recursion included) are a 400, never a 500."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidRequest(
            f"request body is nested more than {MAX_JSON_DEPTH} levels deep"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def validate_payload(op: Operation, data: Any, *, max_tokens_cap: int) -> dict[str, Any]:
    """Validate an already-decoded body (queue messages and batch lines come decoded)."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    _check_depth(data)
    try:
        parsed = _MODELS[op].model_validate(data)
    except ValidationError as exc:
        param, msg = _first_error(exc)
        raise InvalidRequest(f"{param or 'body'}: {msg}", param=param or None) from None
    if isinstance(parsed, ChatCompletionRequest):
        _check_chat(parsed)
    elif isinstance(parsed, CompletionRequest):
        _check_prompt(parsed.prompt)
    elif isinstance(parsed, EmbeddingRequest):
        _check_embedding_input(parsed.input)
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(parsed, field, None)
        if value is not None and value > max_tokens_cap:
            raise InvalidRequest(
                f"{field} is {value}; this endpoint allows at most {max_tokens_cap}",
                param=field,
            )
    n, best_of = getattr(parsed, "n", None), getattr(parsed, "best_of", None)
    if n is not None and best_of is not None and best_of < n:
        raise InvalidRequest("best_of: must be at least 'n'", param="best_of")
    return data


# -- the OpenAI Batch input line (a batch file's lines, a job) ------------------------------


class BatchLine:
    """A checked OpenAI Batch line; ``body`` is as given (the service validates it);
    ``traceparent`` is the line's own W3C trace context, when it carries one.

    A plain class: every function imports this module, and a dataclass costs ~1 ms of
    cold start to build."""

    __slots__ = ("body", "custom_id", "op", "traceparent", "url")

    def __init__(
        self,
        op: Operation,
        url: str,
        custom_id: str | None,
        body: Any,
        traceparent: str | None = None,
    ) -> None:
        self.op = op
        self.url = url
        self.custom_id = custom_id
        self.body = body
        self.traceparent = traceparent


class BadLine(ValueError):
    """A line that breaks a rule: ``code`` and ``param`` name which; ``custom_id`` is set
    when the line had a readable one."""

    def __init__(
        self, code: str, message: str, *, param: str | None = None, custom_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.custom_id = custom_id


def parse_batch_line(data: Any) -> BatchLine:
    """Check a decoded OpenAI Batch line ``{"custom_id", "method", "url", "body"}``.

    The one set of rules, for batch files and jobs alike (checked in this order):

    - the line is a JSON object;
    - ``custom_id``, when present, is a non-empty string (a batch file also requires one,
      its outputs are matched by it; a job has its own id and may go without);
    - ``method`` is ``"POST"`` exactly, the only method OpenAI Batch supports (absent:
      POST);
    - ``url`` is one of ``OPERATION_URLS``;
    - ``body.stream`` is refused: a batch line's or a job's answer is whole;
    - ``traceparent`` is kept when it is a string under 256 characters.

    Raises ``BadLine``; each caller maps it to its own answer (a batch error line, a 400,
    a poisoned message).
    """
    if not isinstance(data, dict):
        raise BadLine("invalid_request", "a line must be a JSON object")
    cid = data.get("custom_id")
    if cid is not None and (not isinstance(cid, str) or not cid):
        raise BadLine(
            "missing_custom_id", "'custom_id' must be a non-empty string", param="custom_id"
        )
    method = data.get("method", "POST")
    if method != "POST":
        raise BadLine(
            "invalid_method", f"method must be POST, got {method!r}", param="method", custom_id=cid
        )
    url = data.get("url")
    op = OPERATION_URLS.get(url) if isinstance(url, str) else None
    if op is None:
        said = "missing 'url'" if url is None else f"unknown url {url!r}"
        raise BadLine(
            "invalid_url",
            f"{said}; expected one of {', '.join(OPERATION_URLS)}",
            param="url",
            custom_id=cid,
        )
    body = data.get("body")
    if isinstance(body, dict) and body.get("stream"):
        raise BadLine(
            "invalid_request",
            "body.stream is not supported: a batch line's or a job's answer is whole",
            param="stream",
            custom_id=cid,
        )
    parent = data.get("traceparent")
    return BatchLine(
        op, op.url, cid, body, parent if isinstance(parent, str) and len(parent) < 256 else None
    )
