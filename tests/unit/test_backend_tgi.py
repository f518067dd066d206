"""OpenAI <-> TGI payload conversion."""

from __future__ import annotations

import json

import pytest

from shared.backends import tgi
from shared.errors import BackendError
from shared.schemas import Operation


def test_chat_payload_becomes_tgi_parameters() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    payload = {"model": "m", "messages": messages, "max_tokens": 5, "temperature": 0,
               "top_p": 1.0, "stop": "x", "seed": 1}  # fmt: skip
    body = tgi.to_tgi(Operation.CHAT, payload, stream=False)
    assert body["inputs"] == "system: be brief\nuser: hi\nassistant:"
    assert body["parameters"] == {"return_full_text": False, "details": True,
                                  "decoder_input_details": True, "max_new_tokens": 5,
                                  "do_sample": False, "stop": ["x"], "seed": 1}  # fmt: skip


def test_answer_and_stream_become_openai_shapes() -> None:
    data = [{"generated_text": "a b", "details": {"finish_reason": "length",
             "generated_tokens": 2, "prefill": [{}, {}, {}]}}]  # fmt: skip
    out = tgi.from_tgi(Operation.CHAT, data, "m")
    assert out["choices"][0]["message"]["content"] == "a b"
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    tr = tgi.StreamTranslator(Operation.CHAT, "m", include_usage=True)
    raw = tr.event({"token": {"text": "a", "special": False}, "generated_text": None})
    raw += tr.event({"token": {"text": "</s>", "special": True}, "generated_text": "a",
                     "details": {"finish_reason": "eos_token", "generated_tokens": 1}})  # fmt: skip
    raw += tr.end()
    events = [line[6:] for line in raw.split(b"\n\n") if line]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "a"
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 1


def test_stream_error_event_and_truncated_stream_raise() -> None:
    tr = tgi.StreamTranslator(Operation.CHAT, "m", include_usage=False)
    with pytest.raises(BackendError):
        tr.event({"error": "boom", "error_type": "generation"})
    with pytest.raises(BackendError):
        tgi.StreamTranslator(Operation.CHAT, "m", include_usage=False).end()
