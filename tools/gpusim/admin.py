"""Routes every simulator serves whatever its protocols: health, metrics and test control.

- ``GET /health``: 200 ``{"status": "ok"}`` while the process serves.
- ``GET /metrics``: Prometheus text (vLLM names plus ``gpusim_requests_total``).
- ``POST /admin/faults``: ``{"type", "count"?, "for_s"?, "retry_after"?}`` or a list of them
  (queued in order), and/or ``{"rate", "types"?}``; answers the fault state.
  ``GET`` shows it, ``DELETE`` clears every fault and sets the rate to 0.
- ``GET /admin/stats``: request counts per route and status, completed model calls in
  total and per ``x-gpusim-tag``, running/waiting now and their peaks, the fault state.
- ``POST /admin/scale``: ``{"replicas": n, "warmup_s"?: s}``: scale in at once, out after
  the warm-up; ``GET`` shows replicas ready, the target and seconds until it is ready.
- ``POST /admin/reset``: zero those stats (the Prometheus counters stay monotonic).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from . import wire
from .faults import FaultSpecError
from .runtime import Runtime


def routes(rt: Runtime) -> list[BaseRoute]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        text = rt.metrics.render(
            running=rt.engine.running, waiting=rt.engine.waiting, model_name=rt.primary_model
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            rt.faults.clear()
        elif request.method == "POST":
            try:
                rt.faults.schedule_from_json(await wire.loads(await request.body()))
            except (ValueError, FaultSpecError) as exc:
                return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        return JSONResponse(rt.faults.describe())

    async def scale(request: Request) -> Response:
        if request.method == "POST":
            try:
                spec = await wire.loads(await request.body())
                replicas = int(spec["replicas"])
                warmup = spec.get("warmup_s")
                rt.engine.scale(replicas, None if warmup is None else float(warmup))
            except (ValueError, TypeError, KeyError) as exc:
                return JSONResponse({"error": {"message": f"bad scale: {exc}"}}, status_code=400)
        return JSONResponse(rt.engine.describe_scale())

    async def stats(request: Request) -> Response:
        return JSONResponse(rt.stats())

    async def reset(request: Request) -> Response:
        rt.reset_stats()
        return JSONResponse(rt.stats())

    return [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/admin/stats", stats, methods=["GET"]),
        Route("/admin/scale", scale, methods=["GET", "POST"]),
        Route("/admin/reset", reset, methods=["POST"]),
    ]
