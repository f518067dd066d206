"""The public model list (``GET /v1/models``), wildcard backends included.

A backend with ``models: ["*"]`` routes any name, so its names come from its kind's
``list_models`` (each kind's module says what it lists):
- ``openai``: the endpoint's own ``GET /v1/models`` (vLLM, TGI, SGLang, Ollama list what
  they serve);
- ``azure_openai``: the ``deployment`` when one is set (every name goes to it); otherwise,
  with ``api_style: "v1"``, the resource's ``/openai/v1/models``; the deployments API has no
  data-plane call that lists deployments, so such a backend adds nothing;
- ``azureml``: its ``deployment`` when set; ``sagemaker``: nothing (no data-plane list).
A backend's ``served_model`` is added too. Answers are cached per backend for
``LIST_TTL_S`` (failures for ``FAILED_TTL_S``), each listing is bounded by ``LIST_TIMEOUT_S``,
and a backend that cannot be listed is skipped: the list still answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from shared.backends.base import Backend
from shared.context import Context

log = logging.getLogger("shared.model_list")

LIST_TTL_S = 30.0
FAILED_TTL_S = 5.0
LIST_TIMEOUT_S = 5.0
OWNER = "serverless-inference"


class ModelLister:
    """Per-process cache of what each wildcard backend serves."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def _listed(self, backend: Backend, ctx: Context) -> list[str]:
        cached = self._cache.get(backend.name)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        config: Any = backend.config
        names: list[str] = []
        ttl = LIST_TTL_S
        try:
            bounded = Context(
                deadline=min(ctx.deadline, ctx.clock() + LIST_TIMEOUT_S),
                request_id=ctx.request_id,
                clock=ctx.clock,
                caller=ctx.caller,
            )
            async with asyncio.timeout(max(bounded.remaining(), 0.0)):
                names = await backend.list_models(bounded)
        except Exception as err:  # any failure (refused, timeout, not JSON): skip it
            log.warning("model list: backend %s skipped: %s", backend.name, type(err).__name__)
            ttl = FAILED_TTL_S
        served = getattr(config, "served_model", None)
        if served and served not in names:
            names.append(str(served))
        self._cache[backend.name] = (self._clock() + ttl, names)
        return names

    async def names(self, backends: Sequence[Backend], ctx: Context) -> list[str]:
        """Configured names first, then what wildcard backends serve; no duplicates."""
        out: list[str] = []
        for backend in backends:
            out += [n for n in backend.config.models if n != "*" and n not in out]
        wild = [b for b in backends if "*" in b.config.models]
        for listed in await asyncio.gather(*(self._listed(b, ctx) for b in wild)):
            out += [n for n in listed if n not in out]
        return out

    async def listing(self, backends: Sequence[Backend], ctx: Context) -> dict[str, Any]:
        names = await self.names(backends, ctx)
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": OWNER} for n in names],
        }
