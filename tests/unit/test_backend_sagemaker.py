"""SageMaker wire pieces: line reassembly, event-stream framing, SigV4, error mapping."""

from __future__ import annotations

import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError

from shared.backends.sagemaker import _sse_line, map_client_error
from shared.errors import BackendRateLimited, BackendRejected, BackendUnavailable
from shared.lines import LineSplitter
from tools.gpusim import eventstream, sigv4

STREAM = (
    'data: {"choices":[{"delta":{"content":"héllo wörld ✓"}}]}\n\n'
    'data: {"choices":[{"delta":{"content":" more"}}]}\r\n\r\n'
    "data: [DONE]\n\n"
).encode()


def reassemble(parts: list[bytes]) -> bytes:
    buf = LineSplitter()
    out = b""
    for part in parts:
        out += b"".join(_sse_line(line) for line in buf.lines(part))
    return out + _sse_line(buf.rest())


def test_every_split_point_yields_the_same_events() -> None:
    whole = reassemble([STREAM])
    assert whole.count(b"data: ") == 2 and b"[DONE]" not in whole
    for i in range(len(STREAM) + 1):
        assert reassemble([STREAM[:i], STREAM[i:]]) == whole, i
    for i in range(1, len(STREAM)):
        for j in range(i, len(STREAM), 5):
            assert reassemble([STREAM[:i], STREAM[i:j], STREAM[j:]]) == whole


def test_event_stream_frames_decode_with_botocore() -> None:
    buf = EventStreamBuffer()
    buf.add_data(eventstream.payload_part(b"abc") + eventstream.model_stream_error("boom"))
    first, second = list(buf)
    assert first.headers[":event-type"] == "PayloadPart" and first.payload == b"abc"
    assert second.headers[":exception-type"] == "ModelStreamError"
    assert json.loads(second.payload)["Message"] == "boom"


def _signed(secret: str = "testing") -> AWSRequest:
    request = AWSRequest("POST", "http://127.0.0.1:9/endpoints/ep-1/invocations", data=b"{}",
                         headers={"Content-Type": "application/json"})  # fmt: skip
    SigV4Auth(Credentials("testing", secret), "sagemaker", "us-east-1").add_auth(request)
    return request


def _verify(request: AWSRequest, body: bytes = b"{}") -> str:
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = "127.0.0.1:9"
    return sigv4.verify("POST", "/endpoints/ep-1/invocations", "", headers, body,
                        credentials={"testing": "testing"}, service="sagemaker")  # fmt: skip


def test_sigv4_accepts_botocore_signature_and_refuses_tampering() -> None:
    assert _verify(_signed()) == "testing"
    with pytest.raises(sigv4.SignatureError) as info:
        _verify(_signed(), body=b'{"x":1}')
    assert info.value.code == "InvalidSignatureException"
    with pytest.raises(sigv4.SignatureError):
        _verify(_signed(secret="other"))


def _client_error(code: str, status: int, **extra: object) -> ClientError:
    response = {"Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status,
                                     "HTTPHeaders": {"retry-after": "3"}}, **extra}  # fmt: skip
    return ClientError(response, "InvokeEndpoint")  # type: ignore[arg-type]


def test_client_errors_map_to_the_shared_tree() -> None:
    err = map_client_error(_client_error("ModelError", 424, OriginalStatusCode=429), "sm")
    assert isinstance(err, BackendRateLimited) and err.retry_after == 3.0
    err = map_client_error(_client_error("ModelError", 424, OriginalStatusCode=400), "sm")
    assert isinstance(err, BackendRejected) and err.status == 400 and not err.retryable
    err = map_client_error(_client_error("ModelNotReadyException", 429), "sm")
    assert isinstance(err, BackendUnavailable) and err.retryable
    err = map_client_error(_client_error("ValidationError", 400), "sm")
    assert isinstance(err, BackendRejected) and err.status == 400
    err = map_client_error(_client_error("InternalFailure", 500), "sm")
    assert err.retryable and err.status == 502
