"""Deterministic text, tokens and embeddings: no model, only a seeded vocabulary.

Tokenizer: one token per word (``\\w+``) or per punctuation character, so
``count_tokens("Hello, world!") == 4``. Chat prompts cost the tokens of every message's text
plus ``MESSAGE_OVERHEAD`` per message plus ``REPLY_PRIMING`` (a chat template's role markers).

Output: :func:`plan_output` derives a seeded RNG from (server seed, model, prompt, request
seed), draws a natural length in ``[min_tokens, max_tokens]`` and that many tokens from
``VOCABULARY`` (a word, with a leading space after the first, or sentence punctuation).
The same inputs always give the same tokens; nothing else (time, load) changes them.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORDS = (
    "the of and to in is that for it as with was on be by this are from or at an "
    "model token batch kernel tensor memory cache layer weight queue request stream "
    "latency throughput prompt answer vector matrix signal cloud event function region "
    "quiet bright swift gentle amber silver river mountain forest harbor meadow lantern "
    "compute shard replica node cluster engine sample window context"
)
VOCABULARY = tuple(_WORDS.split())
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def message_text(content: object) -> str:
    """Text of an OpenAI message ``content``: a string or a list of parts (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def chat_prompt(messages: Sequence[dict[str, object]]) -> tuple[str, int]:
    """(canonical prompt text, prompt token count) of a list of chat messages."""
    texts = [f"{m.get('role', '')}: {message_text(m.get('content'))}" for m in messages]
    tokens = sum(count_tokens(message_text(m.get("content"))) for m in messages)
    return "\n".join(texts), tokens + MESSAGE_OVERHEAD * len(messages) + REPLY_PRIMING


def _rng(*parts: object) -> random.Random:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class OutputPlan:
    """What a generation will emit: ``tokens`` (text pieces) and why it ends."""

    tokens: tuple[str, ...]
    finish_reason: str  # "stop" | "length"

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def natural_tokens(
    seed: int, model: str, prompt: str, request_seed: int | None, min_tokens: int, max_tokens: int
) -> list[str]:
    rng = _rng(seed, model, prompt, request_seed)
    length = rng.randint(min_tokens, max_tokens)
    tokens: list[str] = []
    since_period = 0
    for i in range(length):
        if since_period >= 6 and i < length - 1 and rng.random() < 0.15:
            tokens.append("." if rng.random() < 0.7 else ",")
            since_period = 0
            continue
        word = rng.choice(VOCABULARY)
        tokens.append(word if i == 0 else " " + word)
        since_period += 1
    return tokens


def apply_limits(
    tokens: Sequence[str], max_tokens: int | None, stop: Sequence[str] = ()
) -> OutputPlan:
    """Cut ``tokens`` at the first stop string (excluded, finish "stop") or at ``max_tokens``
    (finish "length"), whichever comes first, like vLLM does. A stop string may span
    tokens; the token it starts in is shortened to the text before it."""
    limit = len(tokens) if max_tokens is None else min(max_tokens, len(tokens))
    stops = [s for s in stop if s]
    longest = max((len(s) for s in stops), default=0)
    text = ""
    for n, token in enumerate(tokens[:limit], start=1):
        search_from = max(0, len(text) - longest + 1)
        text += token
        hits = [h for h in (text.find(s, search_from) for s in stops) if h >= 0]
        if hits:
            return OutputPlan(_prefix_tokens(tokens[:n], min(hits)), "stop")
    finish = "length" if max_tokens is not None and max_tokens < len(tokens) else "stop"
    return OutputPlan(tuple(tokens[:limit]), finish)


def _prefix_tokens(tokens: Sequence[str], length: int) -> tuple[str, ...]:
    """The tokens covering the first ``length`` characters, the last one shortened."""
    kept: list[str] = []
    used = 0
    for token in tokens:
        if used + len(token) > length:
            if length > used:
                kept.append(token[: length - used])
            break
        kept.append(token)
        used += len(token)
    return tuple(kept)


def plan_output(
    *,
    seed: int,
    model: str,
    prompt: str,
    request_seed: int | None,
    min_tokens: int,
    max_tokens: int,
    limit: int | None,
    stop: Sequence[str] = (),
    prefix: str = "",
) -> OutputPlan:
    """The output for ``prompt``; with a ``prefix`` (a partial answer to continue), what
    follows it: the rest of the prompt's own answer when the prefix is the start of it (so
    an answer cut anywhere and continued is the uncut answer), else a natural answer to
    prompt + prefix."""
    natural = natural_tokens(seed, model, prompt, request_seed, min_tokens, max_tokens)
    if prefix:
        rest = continuation(natural, prefix)
        if rest is None:
            rest = natural_tokens(seed, model, prompt + prefix, request_seed, min_tokens,
                                  max_tokens)  # fmt: skip
        natural = rest
    return apply_limits(natural, limit, stop)


def continuation(tokens: Sequence[str], prefix: str) -> list[str] | None:
    """The tokens after ``prefix`` (the token it ends inside shortened), or None when
    ``prefix`` is not the start of their text."""
    if not "".join(tokens).startswith(prefix):
        return None
    used = 0
    for i, token in enumerate(tokens):
        if used + len(token) > len(prefix):
            return [token[len(prefix) - used :], *tokens[i + 1 :]]
        used += len(token)
    return []


def embedding(seed: int, model: str, text: str, dim: int) -> list[float]:
    """A unit vector that depends only on (seed, model, text, dim)."""
    rng = _rng(seed, model, text, dim)
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def encode_base64(vector: Iterable[float]) -> str:
    """OpenAI ``encoding_format: base64``: little-endian float32 bytes, base64."""
    packed = array.array("f", vector)
    if packed.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte floats
        raise RuntimeError("float32 array expected")
    if sys.byteorder != "little":  # pragma: no cover - x86/arm64 are little-endian
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
