"""gpusim's deterministic tokens, text limits and embeddings."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from tools.gpusim import text


def test_tokenizer_counts_words_and_punctuation() -> None:
    assert text.count_tokens("Hello, world!") == 4
    assert text.count_tokens("") == 0
    assert text.count_tokens("  spaced   out  ") == 2


def test_chat_prompt_counts_message_overhead_and_text_parts() -> None:
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "Be brief."},  # 3 tokens
        {"role": "user", "content": [{"type": "text", "text": "two words"},
                                     {"type": "image_url", "image_url": {"url": "x"}}]},
    ]  # fmt: skip
    prompt, tokens = text.chat_prompt(messages)
    assert tokens == 3 + 2 + 2 * text.MESSAGE_OVERHEAD + text.REPLY_PRIMING
    assert "Be brief." in prompt and "two words" in prompt


def test_output_depends_only_on_seed_model_prompt_and_request_seed() -> None:
    base = dict(seed=1, model="m", prompt="p", request_seed=None, min_tokens=8, max_tokens=40)
    first = text.natural_tokens(**base)  # type: ignore[arg-type]
    assert text.natural_tokens(**base) == first  # type: ignore[arg-type]
    assert 8 <= len(first) <= 40
    assert not first[0].startswith(" ") and all(t.startswith(" ") or t in ".," for t in first[1:])
    for change in ({"seed": 2}, {"model": "n"}, {"prompt": "q"}, {"request_seed": 5}):
        assert text.natural_tokens(**{**base, **change}) != first  # type: ignore[arg-type]


def test_max_tokens_cuts_with_length_and_natural_end_is_stop() -> None:
    tokens = ["a", " b", " c", " d"]
    assert text.apply_limits(tokens, 2) == text.OutputPlan(("a", " b"), "length")
    assert text.apply_limits(tokens, 9) == text.OutputPlan(tuple(tokens), "stop")
    assert text.apply_limits(tokens, None).finish_reason == "stop"


def test_stop_string_spanning_tokens_cuts_inside_the_earlier_token() -> None:
    tokens = ["alpha", " beta", " gamma"]
    plan = text.apply_limits(tokens, None, stop=["ha be"])
    assert plan == text.OutputPlan(("alp",), "stop")
    assert text.apply_limits(tokens, None, stop=["zzz", " gam"]).text == "alpha beta"
    assert text.apply_limits(tokens, None, stop=["alpha"]) == text.OutputPlan((), "stop")


def test_stop_after_the_token_limit_is_not_applied() -> None:
    plan = text.apply_limits(["a", " b", " c"], 2, stop=[" c"])
    assert plan == text.OutputPlan(("a", " b"), "length")


def test_embeddings_are_deterministic_unit_vectors() -> None:
    v = text.embedding(0, "m", "hello", 16)
    assert len(v) == 16 and math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-12)
    assert text.embedding(0, "m", "hello", 16) == v
    assert text.embedding(0, "m", "hellO", 16) != v
    assert text.embedding(1, "m", "hello", 16) != v


def test_base64_is_little_endian_float32() -> None:
    v = [0.5, -0.25, 1.0]
    raw = base64.b64decode(text.encode_base64(v))
    assert struct.unpack("<3f", raw) == pytest.approx(v)
