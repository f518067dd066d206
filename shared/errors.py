"""One exception tree, rendered as OpenAI's error envelope.

    InferenceError                      (500 server_error)
    ├── InvalidRequest                  (400 invalid_request_error)
    │   └── PayloadTooLarge             (413)
    ├── AuthenticationFailed            (401 authentication_error)
    ├── ModelNotFound                   (404 not_found_error, code model_not_found)
    ├── NotFound                        (404 not_found_error)
    ├── QuotaExceeded                   (429 rate_limit_exceeded, inbound quota)
    ├── ConfigError                     (500, names the bad setting)
    └── BackendError                    (502 api_error: the model endpoint misbehaved)
        ├── BackendRejected             (4xx from the endpoint passed through, e.g. content_filter)
        │   └── ContextTooLong          (400 context_length_exceeded: the next backend may fit it)
        ├── BackendRateLimited          (429 from the endpoint, carries retry_after)
        │   └── AtCapacity              (429 capacity_exceeded: every candidate is full)
        ├── BackendUnavailable          (503, carries retry_after)
        │   └── BackendWarming          (503 backend_warming: scaling out from zero)
        ├── BackendTimeout              (504)
        └── BackendConnectionError      (502, connect/reset)
    DeadlineExceeded                    (504, the invocation ran out of time)

Provider errors are translated at the edge (``raise BackendX(...) from exc``) so callers
only ever see this tree; ``retryable`` tells the retry policy and the router what to do.
"""

from __future__ import annotations

from typing import Any


class InferenceError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retryable: bool = False
    #: False when retrying within this invocation is pointless (every backend serving the
    #: model was abandoned after a timeout); a later invocation (a job's next delivery, a
    #: batch line's next try) may still retry a ``retryable`` error.
    retry_here: bool = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.extra = extra or {}

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        err.update(self.extra)
        return {"error": err}

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None and self.status in (429, 503):
            return {"Retry-After": str(max(1, round(self.retry_after)))}
        return {}


class InvalidRequest(InferenceError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class AuthenticationFailed(InferenceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(InferenceError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class QuotaExceeded(InferenceError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class ConfigError(InferenceError):
    """Invalid configuration: the message names the setting (and field) at fault."""

    status = 500
    type = "server_error"
    code = "configuration_error"


class BackendError(InferenceError):
    status = 502
    type = "api_error"
    code = "backend_error"
    retryable = True


class BackendRejected(BackendError):
    """The endpoint refused the request itself (4xx): passed through, never retried."""

    retryable = False


class ContextTooLong(BackendRejected):
    """The prompt and ``max_tokens`` do not fit the endpoint's context window. Not retried on
    the same endpoint; the router tries the next backend serving the model (one with a
    larger context may), and the caller gets this only when none fits."""

    status = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"


_CONTEXT_WORDS = ("maximum context length", "context length exceeded", "context window",
                  "`max_new_tokens` must be <=")  # fmt: skip


def is_context_length(code: object, message: str) -> bool:
    """Whether an endpoint's 4xx says the request does not fit its context: OpenAI's and
    Azure's ``context_length_exceeded`` code, or the words vLLM and TGI use."""
    if code == "context_length_exceeded":
        return True
    text = message.lower()
    return any(word.lower() in text for word in _CONTEXT_WORDS)


class BackendRateLimited(BackendError):
    status = 429
    type = "rate_limit_exceeded"
    code = "backend_rate_limited"


class BackendUnavailable(BackendError):
    status = 503
    code = "backend_unavailable"


class AtCapacity(BackendRateLimited):
    """Every backend serving the model holds ``max_concurrency`` requests, and the wait for
    a slot reached the deadline (or the caller asked not to wait: ``Prefer:
    respond-async``). No model call was made: a job or batch line waits and tries again
    without using up its attempts (``waits``)."""

    code = "capacity_exceeded"
    waits = True


class BackendWarming(BackendUnavailable):
    """The endpoint has no capacity yet: scaled to zero, or the first replica still
    starting (SageMaker's "no capacity" answer). Not a rejection: the caller retries after
    ``Retry-After``; jobs and batch lines wait without using up their attempts."""

    code = "backend_warming"
    waits = True


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"


class BackendConnectionError(BackendError):
    code = "backend_connection_error"
    #: True when the request never reached the endpoint (connect failed): nothing to charge.
    no_work = False


class DeadlineExceeded(InferenceError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"
