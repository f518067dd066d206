"""Backend kind ``sagemaker``: a SageMaker real-time endpoint (TGI or vLLM container).

Calls go through boto3's ``sagemaker-runtime`` client (SigV4 with the function's IAM role),
one client per process per (region, endpoint_url, timeout), built on first use. botocore's
own retries are off (``max_attempts: 1``): the project's retry policy and router decide,
and botocore would not retry ModelError or ModelNotReady anyway. boto3 is synchronous, so
each call runs in a worker thread of the shared blocking-I/O pool.

A call never outlives its invocation by much: a thread cannot be cancelled, so each call's
botocore read timeout is the backend's ``timeout_s`` or, when less time remains, the
largest of ``TIMEOUT_BUCKETS`` that fits (one cached client per bucket). At most
``MAX_IN_FLIGHT`` calls run at once per process; more wait, without a thread, for one to
end (until their deadline), so a burst of slow calls cannot take every pool thread.

Payloads: ``messages`` sends OpenAI chat (the container's Messages API) and passes its JSON
and SSE through; ``tgi`` converts to and from TGI's ``{"inputs", "parameters"}``
(``shared.backends.tgi``). Streams come from ``invoke_endpoint_with_response_stream``: the
``PayloadPart`` bytes are reassembled into lines (parts do not align with lines or even
UTF-8 characters), then parsed as SSE, and re-emitted as OpenAI chunks ending in exactly one
``data: [DONE]``.

Errors (botocore ``ClientError`` codes) become the shared tree: ``ModelError`` (424) by its
``OriginalStatusCode`` (429/5xx retryable, 4xx the caller's), ``ModelNotReadyException``
and ``ServiceUnavailable`` -> 503 retryable, ``ThrottlingException`` -> 429,
``ValidationError`` -> 400, ``InternalFailure`` -> 502 retryable; connection errors and
timeouts -> 502/504.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

from pydantic import Field

from shared.backends import tgi
from shared.backends.base import SSE_DONE, BaseBackend, ByteStream, Result
from shared.blocking import WORKERS as POOL_WORKERS
from shared.blocking import executor
from shared.context import Context
from shared.errors import (
    BackendConnectionError,
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    BackendWarming,
    ContextTooLong,
    DeadlineExceeded,
    InferenceError,
    is_context_length,
)
from shared.lifecycle import Keyed, Singleton
from shared.lines import LineSplitter
from shared.retry import server_delay
from shared.schemas import Operation
from shared.settings import AuthKind, BackendConfig
from shared.telemetry import traceparent


class SageMakerBackendConfig(BackendConfig):
    provider = "aws.sagemaker"
    #: A stream probe would hold a worker thread for the whole answer: ask for a chat.
    default_probe = "chat"

    kind: Literal["sagemaker"]
    auth: AuthKind = "aws_iam"
    endpoint_name: str = Field(min_length=1)
    region: str = Field(min_length=1)
    inference_component: str | None = None
    payload: Literal["messages", "tgi"] = "messages"
    endpoint_url: str | None = None

    def server_url(self) -> str:
        return self.endpoint_url or f"https://runtime.sagemaker.{self.region}.amazonaws.com"


T = TypeVar("T")

#: Read timeouts (s) used when less than ``timeout_s`` remains: few clients, little waste.
TIMEOUT_BUCKETS = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50,
                   60, 75, 90, 120, 150, 180, 240, 300, 450, 600, 900)  # fmt: skip
#: SageMaker calls running at once per process (half the pool: storage calls keep theirs).
MAX_IN_FLIGHT = POOL_WORKERS // 2
GATE_POLL_S = 0.005
#: Retry-After of a "no capacity" answer (SageMaker sends none): a scale-out takes minutes.
WARMING_RETRY_S = 10.0


def read_timeout(timeout_s: float, remaining: float) -> float:
    """The read timeout for a call: ``timeout_s``, or a bucket no longer than ``remaining``."""
    if timeout_s <= remaining:
        return timeout_s
    fitting = [b for b in TIMEOUT_BUCKETS if b <= remaining]
    if fitting:
        return float(fitting[-1])
    return max(0.05, int(remaining * 20) / 20)  # under 0.25 s: 50 ms steps


class CallGate:
    """Counts SageMaker calls whose thread is running (not just awaited) and caps them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.running >= self.limit:
                return False
            self.running += 1
            self.peak = max(self.peak, self.running)
            return True

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


_gate = Singleton(lambda: CallGate(MAX_IN_FLIGHT))


def gate() -> CallGate:
    """The process's gate, built on first use with ``MAX_IN_FLIGHT``."""
    return _gate.get()


def _build_client(key: tuple[str, str | None, float]) -> Any:
    import boto3
    from botocore.config import Config

    region, endpoint_url, timeout_s = key
    config = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=min(5.0, timeout_s),
        read_timeout=timeout_s,
        max_pool_connections=POOL_WORKERS,
    )
    return boto3.session.Session().client(
        "sagemaker-runtime", region_name=region, endpoint_url=endpoint_url, config=config
    )


_clients: Keyed[tuple[str, str | None, float], Any] = Keyed(_build_client)


def get_client(region: str, endpoint_url: str | None, timeout_s: float) -> Any:
    """The process's ``sagemaker-runtime`` client for this region/endpoint_url/timeout."""
    return _clients.get((region, endpoint_url, timeout_s))


def map_client_error(exc: Exception, backend: str) -> InferenceError:
    """Translate a botocore exception into the shared error tree."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return BackendTimeout(f"backend {backend!r} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, ConnectionError):
        return BackendConnectionError(
            f"backend {backend!r} connection failed: {type(exc).__name__}"
        )
    if isinstance(exc, NoCredentialsError):
        err = BackendError(f"backend {backend!r}: no AWS credentials found (IAM role or env)")
        err.retryable = False
        return err
    if not isinstance(exc, ClientError):
        return BackendError(f"backend {backend!r} failed: {type(exc).__name__}")
    info = exc.response.get("Error", {})
    code = str(info.get("Code") or "")
    message = str(info.get("Message") or f"backend {backend!r} answered {code}")
    meta = exc.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    retry_after = server_delay(meta.get("HTTPHeaders") or {})
    if code == "ModelError" or status == 424:
        original = exc.response.get("OriginalStatusCode")
        original = int(original) if str(original or "").isdigit() else 500
        text = f"model container of {backend!r} failed with {original}: {message}"
        if original == 429:
            return BackendRateLimited(text, retry_after=retry_after)
        if original == 503:
            return BackendUnavailable(text, retry_after=retry_after)
        if original >= 500 or original in (408, 409):
            return BackendError(text, retry_after=retry_after)
        if is_context_length(None, message):
            return ContextTooLong(text)
        return BackendRejected(
            text, status=400 if original == 422 else original, code="model_error"
        )
    if code == "ValidationError" and NO_CAPACITY in message.lower():
        return warming(backend, message, retry_after)
    if code == "ModelNotReadyException":
        return warming(backend, message, retry_after)
    if code == "ServiceUnavailable" or status == 503:
        return BackendUnavailable(message, retry_after=retry_after)
    if code in ("ThrottlingException", "TooManyRequestsException") or status == 429:
        return BackendRateLimited(message, retry_after=retry_after)
    if code == "ValidationError" or status == 400:
        return BackendRejected(message, status=400, code="validation_error")
    if status in (401, 403) or code in ("AccessDeniedException", "UnrecognizedClientException",
                                        "InvalidSignatureException"):  # fmt: skip
        err = BackendError(
            f"backend {backend!r} refused our credentials ({code or status}); check the IAM "
            "role allows sagemaker:InvokeEndpoint on the endpoint"
        )
        err.retryable = False
        return err
    if code == "ModelStreamError":
        return BackendError(f"model stream of {backend!r} failed: {message}")
    return BackendError(message, retry_after=retry_after)


#: SageMaker's words while an inference component has no copy (scaled to zero, or scaling
#: out): "Inference Component has no capacity to process this request. ..." (HTTP 400).
NO_CAPACITY = "has no capacity to process this request"


def warming(backend: str, message: str, retry_after: float | None) -> BackendWarming:
    """The endpoint is scaling out (from zero): 503 with Retry-After, not a rejection. Not
    retried within the invocation (a scale-out takes minutes); jobs and batches wait."""
    err = BackendWarming(
        f"backend {backend!r} has no capacity yet (scaling out): {message}",
        retry_after=retry_after or WARMING_RETRY_S,
    )
    err.retry_here = False
    return err


class _EventStreamBody:
    """An accepted response stream: PayloadPart bytes -> lines -> OpenAI SSE bytes."""

    def __init__(self, backend: SageMakerBackend, body: Any, convert: Callable[[bytes], bytes],
                 end: Callable[[], bytes], ctx: Context) -> None:  # fmt: skip
        self._backend = backend
        self._body = body
        self._events = iter(body)
        self._convert = convert
        self._end = end
        self._ctx = ctx

    async def __aiter__(self) -> AsyncIterator[bytes]:
        lines = LineSplitter()
        sentinel: dict[str, Any] = {}
        try:
            while True:
                event = await self._backend._call(next, self._events, sentinel, ctx=self._ctx)
                if event is sentinel:
                    break
                part = event.get("PayloadPart") if isinstance(event, dict) else None
                if not part:
                    continue
                out = b"".join(self._convert(line) for line in lines.lines(part.get("Bytes", b"")))
                if out:
                    yield out
            rest = lines.rest()
            yield (self._convert(rest) if rest else b"") + self._end()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            await asyncio.to_thread(body.close)


def _trace(params: dict[str, Any], ctx: Context) -> None:
    """Trace context to the container: SageMaker passes ``CustomAttributes`` on as the
    ``X-Amzn-SageMaker-Custom-Attributes`` header (it has no header of its own for it)."""
    parent = traceparent(ctx)
    if parent:
        params["CustomAttributes"] = f"traceparent={parent}"


class SageMakerBackend(BaseBackend[SageMakerBackendConfig]):
    config_class = SageMakerBackendConfig

    def _client(self, ctx: Context) -> Any:
        """The client whose read timeout fits what remains of the invocation."""
        c = self.config
        return get_client(c.region, c.endpoint_url, read_timeout(c.timeout_s, ctx.check()))

    async def _call(self, fn: Callable[..., T], *args: Any, ctx: Context, **kwargs: Any) -> T:
        """Run a blocking boto3 call in the pool, never waiting past the deadline; the call
        counts against ``MAX_IN_FLIGHT`` until its thread is done, not just until we stop
        waiting for it."""
        calls = gate()
        while not calls.try_enter():
            ctx.check()
            await asyncio.sleep(GATE_POLL_S)

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                calls.leave()

        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(executor(), run)
        except BaseException:
            calls.leave()
            raise
        try:
            return await asyncio.wait_for(future, timeout=ctx.check())
        except TimeoutError:
            raise DeadlineExceeded(
                "the invocation deadline passed before the model answered"
            ) from None
        except InferenceError:
            raise
        except Exception as exc:
            raise map_client_error(exc, self.name) from exc

    def encode(self, op: Operation, payload: dict[str, Any], *, stream: bool) -> bytes:
        native = self.config.payload == "tgi"
        return tgi.request_body(op, payload, stream=stream, native=native, backend=self.name,
                                chat_only="sagemaker, payload messages")  # fmt: skip

    def _params(self, body: bytes, ctx: Context, *, stream: bool) -> dict[str, Any]:
        c = self.config
        params: dict[str, Any] = {
            "EndpointName": c.endpoint_name,
            "Body": body,
            "ContentType": "application/json",
        }
        if not stream:
            params["Accept"] = "application/json"
        if c.inference_component:
            params["InferenceComponentName"] = c.inference_component
        _trace(params, ctx)
        return params

    async def send(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> bytes:
        client = self._client(ctx)
        params = self._params(body, ctx, stream=False)

        def call() -> bytes:
            response = client.invoke_endpoint(**params)
            return bytes(response["Body"].read())

        return await self._call(call, ctx=ctx)

    def decode(self, op: Operation, payload: dict[str, Any], content: bytes) -> Result:
        if self.config.payload == "tgi":
            return tgi.result(op, payload, content, self.name)
        return Result(content=content, backend=self.name)

    async def send_stream(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> ByteStream:
        client = self._client(ctx)
        params = self._params(body, ctx, stream=True)
        response = await self._call(client.invoke_endpoint_with_response_stream, ctx=ctx, **params)
        events = response["Body"]
        if self.config.payload == "tgi":
            translator = tgi.stream_translator(op, payload)
            return _EventStreamBody(self, events, _tgi_line(translator, self.name),
                                    translator.end, ctx)  # fmt: skip
        return _EventStreamBody(self, events, _sse_line, lambda: SSE_DONE, ctx)

    async def check_ready(self, ctx: Context) -> None:
        """SageMaker has no data-plane health call: check the client builds and credentials
        resolve (the IAM role on Lambda), without invoking the model."""
        self._client(ctx)

        def credentials() -> Any:
            import boto3

            return boto3.session.Session().get_credentials()

        if await self._call(credentials, ctx=ctx) is None:
            raise BackendError(f"backend {self.name!r}: no AWS credentials found")


def _sse_line(line: bytes) -> bytes:
    """One line of a Messages API stream, re-emitted as an SSE event (``[DONE]`` dropped:
    the stream adds exactly one at its end)."""
    if not line.startswith(b"data:"):
        return b""
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return b""
    return b"data: " + data + b"\n\n"


def _tgi_line(translator: tgi.StreamTranslator, backend: str) -> Callable[[bytes], bytes]:
    def convert(line: bytes) -> bytes:
        if not line.startswith(b"data:"):
            return b""
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            return b""
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise BackendError(f"backend {backend!r} sent a bad stream event") from exc
        return translator.event(event) if isinstance(event, dict) else b""

    return convert
