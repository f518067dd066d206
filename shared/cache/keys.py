"""What makes two requests the same question: the exact key and the semantic split.

Fields that cannot change the answer are left out of both, so a streamed and a whole
request for the same body share one entry (the cache can replay it either way):
``stream``, ``stream_options``, ``user``, ``metadata`` and ``store``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from shared.schemas import Operation

#: Request fields that do not change the answer.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store"})
#: The scope of every caller when ``scope`` is ``shared``.
SHARED_SCOPE = "*"
ANONYMOUS = "anonymous"


def scope_of(caller: str | None, scope: str) -> str:
    """The scope a request's entries live in: its caller's id, or one shared scope."""
    if scope == "shared":
        return SHARED_SCOPE
    return caller or ANONYMOUS


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in IGNORED_FIELDS and v is not None}


def exact_key(scope: str, op: Operation, payload: dict[str, Any]) -> str:
    """Hex SHA-256 of (scope, operation, canonical body)."""
    return _digest({"v": 1, "scope": scope, "op": op.value, "body": canonical(payload)})


def scope_tag(scope: str) -> str:
    """The scope as a tag value: a hash, so no caller id is stored and no escaping is needed."""
    return hashlib.sha256(("scope:" + scope).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SemanticParts:
    """A request split into the wording that may vary and everything that must match."""

    text: str  # the last user message's text (or the prompt): what is embedded
    context: str  # hex hash of everything else: model, operation, scope, earlier turns, params


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None  # images, audio...: only an exact repeat may hit
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    return None


def semantic_parts(
    scope: str, op: Operation, payload: dict[str, Any], *, ignore_system: bool
) -> SemanticParts | None:
    """None when the request has no free-text last turn (then only the exact key applies)."""
    body = canonical(payload)
    if op is Operation.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = _text_of(last.get("content"))
        if not text or not text.strip():
            return None
        earlier = [
            m
            for m in messages[:-1]
            if not (
                ignore_system and isinstance(m, dict) and m.get("role") in ("system", "developer")
            )
        ]
        rest = {k: v for k, v in body.items() if k != "messages"}
        last_meta = {k: v for k, v in last.items() if k != "content"}
        context = {"earlier": earlier, "last": last_meta, "params": rest}
    elif op is Operation.COMPLETIONS:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return None
        text = prompt
        context = {"params": {k: v for k, v in body.items() if k != "prompt"}}
    else:
        return None
    return SemanticParts(
        text=text, context=_digest({"v": 1, "scope": scope, "op": op.value, **context})
    )
