"""The simulated GPU: admission, a FIFO waiting queue, and a latency model. Protocol-agnostic.

Protocol modules (openai_api.py, and later azure_openai.py, tgi.py, ...) parse their wire
format into a :class:`GenerationRequest` and use only this API::

    engine.check_context(prompt_tokens, max_tokens)        # ContextTooLong -> a 400
    async with engine.generate(request) as gen:             # Overloaded -> a 429
        async for token in gen:                             # one text piece per token
            ...
        gen.finish_reason, gen.prompt_tokens, gen.completion_tokens
    result = await engine.complete(request)                 # the same, buffered
    vectors, prompt_tokens = await engine.embed(model, texts, tag=...)  # also admitted

Capacity: ``replicas`` replicas each run at most ``max_num_seqs`` sequences; later arrivals
wait in FIFO order. :meth:`Engine.scale` changes the replica count: a scale-in takes effect
at once (running sequences finish), a scale-out after ``warmup_s``; with no replica ready a
request is refused at once with :class:`NoCapacity` (and, with ``wake_on_request``, starts a
scale-out to one replica, as a scale-from-zero policy on the failed call would);
when ``max_waiting`` are already waiting, :class:`Overloaded` is raised at once (the caller
answers 429 with ``retry_after``). Leaving the ``generate`` context (normally, by error or
by cancellation when the client goes away) frees the slot for the next waiter.

Latency (all durations multiplied by ``time_scale``):
    TTFT = queueing wait + ttft_base_ms + prefill_ms_per_token * prompt_tokens
    ITL  = itl_ms * (1 + batch_slowdown * running / max_num_seqs)   (running sampled per token)
Tokens are paced against deadlines, not by sleeping a fixed amount after each token, so
event-loop lateness does not accumulate and throughput follows the knobs closely.

Throughput at full batch (every slot busy, long outputs, TTFT amortised away):
    tokens/s = max_num_seqs * 1000 / (itl_ms * (1 + batch_slowdown) * time_scale)
With the defaults (64 seqs, 10 ms, slowdown 1.0, scale 1): 64 * 1000 / 20 = 3200 tokens/s.
A request with P prompt and N output tokens at full batch takes about
    T(P, N) = (ttft_base_ms + prefill_ms_per_token * P + (N - 1) * itl_ms * (1 + batch_slowdown))
milliseconds (times time_scale), so full-batch request throughput is max_num_seqs / T(P, N)
(alone, use batch_slowdown / max_num_seqs in place of batch_slowdown).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from . import text
from .config import Config
from .metrics import Metrics

#: Texts embedded per worker-thread hop.
EMBED_CHUNK = 64


class Overloaded(Exception):
    """Every slot is running and the waiting queue is full: answer 429 with retry_after."""

    def __init__(self, retry_after: float, running: int, waiting: int) -> None:
        super().__init__(
            f"server overloaded: {running} requests running and {waiting} waiting; "
            f"retry after {retry_after:g}s"
        )
        self.retry_after = retry_after


class NoCapacity(Overloaded):
    """No replica is ready (scaled to zero, or the first one still warming up): each
    protocol answers as its real front end does (SageMaker 400 ``ValidationError``, the
    others 503 with ``Retry-After``)."""

    def __init__(self, retry_after: float) -> None:
        Exception.__init__(self, "no replica is ready to serve the model (scaling from zero)")
        self.retry_after = retry_after


class ContextTooLong(ValueError):
    """prompt_tokens + max_tokens exceeds max_model_len (vLLM answers 400)."""


@dataclass(frozen=True)
class GenerationRequest:
    """What a protocol module extracts from its wire format.

    ``prompt`` is the canonical prompt text the output is derived from (for chat: the
    messages joined, see :func:`text.chat_prompt`); ``prompt_tokens`` its token count.
    ``max_tokens`` None means the natural length. ``seed`` is the request's own seed.
    ``tag`` (the ``x-gpusim-tag`` header) keys the completed-generation count in stats.
    ``prefix`` is a partial answer to continue (vLLM's ``continue_final_message``): the
    output is what follows it, as a deterministic model decoding greedily would give.
    """

    model: str
    prompt: str
    prompt_tokens: int
    max_tokens: int | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    tag: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class CompletionResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Generation:
    """Async iterator over the planned tokens, paced by the latency model.

    ``finish_reason`` is None until the last token has been yielded, then "stop" or
    "length". Only a generation iterated to its end counts as completed in stats.
    """

    def __init__(self, engine: Engine, request: GenerationRequest, plan: text.OutputPlan,
                 arrived: float, admitted: float) -> None:  # fmt: skip
        self._engine = engine
        self.request = request
        self.plan = plan
        self.prompt_tokens = request.prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.arrived = arrived
        self.admitted = admitted
        self.first_token_at: float | None = None
        self._deadline = admitted + engine.ttft_seconds(request.prompt_tokens)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        i = self.completion_tokens
        if i >= len(self.plan.tokens):
            if self.finish_reason is None:
                self._finish()
            raise StopAsyncIteration
        engine = self._engine
        if i > 0:
            step = engine.itl_seconds()
            self._deadline = max(self._deadline + step, time.monotonic() - step)
        delay = self._deadline - time.monotonic()
        await asyncio.sleep(delay if delay > 0 else 0)
        token = self.plan.tokens[i]
        self.completion_tokens = i + 1
        if i == 0:
            self.first_token_at = now = time.monotonic()
            engine.metrics.record_first_token(self.request.model, now - self.arrived)
        if self.completion_tokens == len(self.plan.tokens):
            self._finish()
        return token

    @property
    def text(self) -> str:
        return "".join(self.plan.tokens[: self.completion_tokens])

    def _finish(self) -> None:
        self.finish_reason = self.plan.finish_reason
        if not self.plan.tokens:  # nothing to emit: the prefill still happened
            self.first_token_at = time.monotonic()
        self._engine.metrics.record_finished(
            self.request.model,
            self.completion_tokens,
            self.finish_reason,
            time.monotonic() - self.arrived,
            self.request.tag,
        )


class Engine:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.running = 0
        self.replicas = config.replicas  # ready now
        self.target = config.replicas  # asked for (ready once warmed up)
        self.ready_at = 0.0  # monotonic time the pending scale-out completes
        self._scaling: asyncio.TimerHandle | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.peak_running = 0
        self.peak_waiting = 0
        self.calls = 0  # generations planned (counts only with --vary-answers)
        self.embedder: Any = None
        if config.embeddings_model:
            from .semantic import SentenceEmbedder

            self.embedder = SentenceEmbedder(config.embeddings_model)

    # --- knobs turned into seconds ------------------------------------------------------
    def ttft_seconds(self, prompt_tokens: int) -> float:
        c = self.config
        return (c.ttft_base_ms + c.prefill_ms_per_token * prompt_tokens) * c.time_scale / 1000

    def itl_seconds(self) -> float:
        c = self.config
        load = self.running / (c.max_num_seqs * max(self.replicas, 1))
        return c.itl_ms * (1 + c.batch_slowdown * load) * c.time_scale / 1000

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def reset_peaks(self) -> None:
        self.peak_running = self.running
        self.peak_waiting = self.waiting

    # --- replicas ---------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.replicas * self.config.max_num_seqs

    def scale(self, replicas: int, warmup_s: float | None = None) -> None:
        """Ask for ``replicas``: fewer take effect at once; more once ``warmup_s`` (default
        the config's, times ``time_scale``) has passed."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.target = replicas
        if self._scaling is not None:
            self._scaling.cancel()
            self._scaling = None
        if replicas <= self.replicas:
            self.replicas = replicas
            self.ready_at = 0.0
            return
        delay = (self.config.warmup_s if warmup_s is None else warmup_s) * self.config.time_scale
        loop = asyncio.get_running_loop()
        self.ready_at = time.monotonic() + delay
        self._scaling = loop.call_later(delay, self._warmed, replicas)

    def _warmed(self, replicas: int) -> None:
        self._scaling = None
        self.ready_at = 0.0
        self.replicas = replicas
        while self._waiters and self.running < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.running += 1
                self.peak_running = max(self.peak_running, self.running)
                waiter.set_result(None)

    def describe_scale(self) -> dict[str, object]:
        left = max(0.0, self.ready_at - time.monotonic()) if self.ready_at else 0.0
        return {"replicas": self.replicas, "target": self.target, "ready_in_s": round(left, 3),
                "capacity": self.capacity}  # fmt: skip

    # --- admission --------------------------------------------------------------------
    def check_capacity(self) -> None:
        """Raise :class:`NoCapacity` when no replica is ready (waking one if configured)."""
        if self.replicas > 0:
            return
        if self.config.wake_on_request and self.target == 0:
            self.scale(1)
        left = self.ready_at - time.monotonic() if self.ready_at else self.config.retry_after
        raise NoCapacity(max(left, 0.001))

    async def _acquire(self) -> None:
        c = self.config
        self.check_capacity()
        if self.running < self.capacity and not self._waiters:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            return
        if len(self._waiters) >= c.max_waiting:
            raise Overloaded(c.retry_after, self.running, len(self._waiters))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.peak_waiting = max(self.peak_waiting, len(self._waiters))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        while self._waiters and self.running <= self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over: running stays the same
                return
        self.running -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one running slot (waiting for it in FIFO order); yields the arrival time."""
        arrived = time.monotonic()
        await self._acquire()
        try:
            yield arrived
        finally:
            self._release()

    # --- model calls ------------------------------------------------------------------
    def check_context(self, prompt_tokens: int, max_tokens: int | None) -> None:
        limit = self.config.max_model_len
        wanted = prompt_tokens + (max_tokens or 0)
        if wanted > limit:
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {wanted} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the "
                "messages or completion."
            )

    def plan(self, request: GenerationRequest) -> text.OutputPlan:
        c = self.config
        room = max(0, c.max_model_len - request.prompt_tokens)
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        request_seed = request.seed
        if c.vary_answers:  # the same request answered differently on every call
            self.calls += 1
            request_seed = self.calls if request.seed is None else request.seed ^ (self.calls << 40)
        return text.plan_output(
            seed=c.seed,
            model=request.model,
            prompt=request.prompt,
            request_seed=request_seed,
            min_tokens=c.min_output_tokens,
            max_tokens=c.max_output_tokens,
            limit=limit,
            stop=request.stop,
            prefix=request.prefix,
        )

    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Generation]:
        """Admit ``request`` (raising :class:`Overloaded` at once when full) and yield its
        :class:`Generation` once it holds a running slot."""
        plan = self.plan(request)
        async with self.slot() as arrived:
            self.metrics.record_prompt(request.model, request.prompt_tokens)
            gen = Generation(self, request, plan, arrived, time.monotonic())
            try:
                yield gen
            finally:
                if gen.finish_reason is None:
                    self.metrics.record_aborted(request.model, gen.completion_tokens)

    async def complete(self, request: GenerationRequest) -> CompletionResult:
        async with self.generate(request) as gen:
            pieces = [token async for token in gen]
        assert gen.finish_reason is not None
        return CompletionResult(
            "".join(pieces), gen.finish_reason, gen.prompt_tokens, gen.completion_tokens
        )

    async def embed(
        self,
        model: str,
        texts: Sequence[str],
        *,
        tag: str | None = None,
        dimensions: int | None = None,
    ) -> tuple[list[list[float]], int]:
        """(one unit vector per text, prompt tokens); costs one prefill of all the texts.

        Admitted like a generation (so it can raise :class:`Overloaded`); ``dimensions``
        defaults to ``embedding_dim``."""
        c = self.config
        dim = dimensions or c.embedding_dim
        tokens = await asyncio.to_thread(lambda: sum(text.count_tokens(t) for t in texts))
        async with self.slot() as arrived:
            self.metrics.record_prompt(model, tokens)
            await asyncio.sleep(self.ttft_seconds(tokens))
            # CPU-bound: in a thread, so the loop keeps serving other requests and signals
            # while a big batch is embedded. Chunked, so a cancelled request (shutdown,
            # disconnect) stops between chunks.
            vectors: list[list[float]] = []
            embedder = self.embedder

            def embed_part(part: Sequence[str]) -> list[list[float]]:
                if embedder is not None:
                    encoded: list[list[float]] = embedder.encode(part)
                    return encoded
                return [text.embedding(c.seed, model, t, dim) for t in part]

            for i in range(0, len(texts), EMBED_CHUNK):
                vectors += await asyncio.to_thread(embed_part, texts[i : i + EMBED_CHUNK])
        self.metrics.record_finished(model, 0, "stop", time.monotonic() - arrived, tag)
        return vectors, tokens
