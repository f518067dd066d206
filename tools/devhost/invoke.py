"""Calling user functions: arguments, sync/async dispatch, context and output bindings."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import re
import threading
import typing
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import azure.functions as func
from azure.functions._abc import RetryContext, RpcException, TraceContext

from tools.devhost.config import resolve_setting_expressions
from tools.devhost.registry import FunctionSpec, IndexingError
from tools.devhost.storage import Storage, encode_message

SUPPORTED_OUTPUTS = frozenset({"http", "queue", "blob"})
_BINDING_EXPR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def annotation_of(fn: Callable[..., Any], param: str) -> Any:
    """The resolved annotation of ``param`` (None when missing or unresolvable)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable string annotations: fall back to raw
        hints = {}
    if param in hints:
        return hints[param]
    try:
        ann = inspect.signature(fn).parameters[param].annotation
    except (KeyError, ValueError, TypeError):
        return None
    return None if ann is inspect.Parameter.empty or isinstance(ann, str) else ann


@functools.cache  # asked on every invocation; a function's signature does not change
def wants_context(fn: Callable[..., Any]) -> bool:
    try:
        return "context" in inspect.signature(fn).parameters
    except (ValueError, TypeError):
        return False


def check_supported(spec: FunctionSpec) -> None:
    """Fail at start-up, naming the binding, rather than at the first invocation."""
    for b in spec.bindings:
        if b is spec.trigger or b == spec.trigger:
            continue
        if b.get("direction") != "OUT" or b["type"] not in SUPPORTED_OUTPUTS:
            raise IndexingError(
                f"function {spec.name!r}: binding {b.get('name')!r} of type {b['type']!r} "
                f"({b.get('direction')}) is not supported by devhost"
            )


class _Retry(RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> RpcException:
        raise AttributeError("no retry exception: devhost does not run retry policies")


class _Trace(TraceContext):
    def __init__(self) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class InvocationContext(func.Context):
    """``func.Context`` for one invocation."""

    def __init__(self, function_name: str, function_directory: str) -> None:
        self._id = str(uuid.uuid4())
        self._name = function_name
        self._dir = function_directory
        self._tls = threading.local()
        self._trace = _Trace()

    @property
    def invocation_id(self) -> str:
        return self._id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return typing.cast("type[threading.local]", self._tls)

    @property
    def function_name(self) -> str:
        return self._name

    @property
    def function_directory(self) -> str:
        return self._dir

    @property
    def trace_context(self) -> TraceContext:
        return self._trace

    @property
    def retry_context(self) -> RetryContext:
        return _Retry()


class OutValue(func.Out[Any]):
    """``func.Out[T]`` for a queue or blob output binding."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if hasattr(value, "read"):
        return _as_bytes(value.read())
    return json.dumps(value).encode("utf-8")


def fill_binding_expr(template: str, binding_data: Mapping[str, str]) -> str:
    text = resolve_setting_expressions(template)

    def sub(m: re.Match[str]) -> str:
        key = m[1]
        if key not in binding_data:
            raise ValueError(f"binding expression {{{key}}} has no value for this trigger")
        return binding_data[key]

    return str(_BINDING_EXPR.sub(sub, text))


class Invoker:
    """Runs user functions: coroutines on the loop, plain functions in a thread pool."""

    def __init__(self, storage: Storage, *, message_encoding: str, max_workers: int = 64) -> None:
        self.storage = storage
        self.message_encoding = message_encoding
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="devhost-fn")

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        result = await loop.run_in_executor(self._pool, functools.partial(ctx.run, fn, **kwargs))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def invoke(
        self,
        spec: FunctionSpec,
        trigger_value: Any,
        *,
        binding_data: Mapping[str, str] | None = None,
        function_directory: str = ".",
    ) -> Any:
        """Call ``spec`` with its trigger value, context and outputs; write outputs on success."""
        kwargs: dict[str, Any] = {spec.trigger["name"]: trigger_value}
        if wants_context(spec.func):
            kwargs["context"] = InvocationContext(spec.name, function_directory)
        outs: dict[str, OutValue] = {}
        for b in spec.outputs:
            if b["type"] in ("queue", "blob") and b["name"] != "$return":
                outs[b["name"]] = kwargs[b["name"]] = OutValue()
        result = await self.call(spec.func, kwargs)
        if any(b["type"] in ("queue", "blob") for b in spec.outputs):  # else no thread hop
            await asyncio.to_thread(self._write_outputs, spec, outs, result, binding_data or {})
        return result

    def _write_outputs(
        self,
        spec: FunctionSpec,
        outs: Mapping[str, OutValue],
        result: Any,
        binding_data: Mapping[str, str],
    ) -> None:
        for b in spec.outputs:
            if b["type"] not in ("queue", "blob"):
                continue
            value = result if b["name"] == "$return" else outs[b["name"]].get()
            if value is None:
                continue
            if b["type"] == "queue":
                queue = self.storage.queue(
                    b.get("connection"), fill_binding_expr(b["queueName"], binding_data)
                )
                items = value if isinstance(value, list) else [value]
                for item in items:
                    queue.send_message(encode_message(_as_bytes(item), self.message_encoding))
            else:
                container, _, blob = fill_binding_expr(b["path"], binding_data).partition("/")
                self.storage.container(b.get("connection"), container).upload_blob(
                    blob, _as_bytes(value), overwrite=True
                )

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
