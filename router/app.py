"""The router service: a small Starlette app over the Registry port.

Routes:
- ``GET /gateway?key=AFFINITY`` -> ``{"url", "gateway_id"}``; 503 ``{"error": {...}}`` when no
  gateway is live (or the registry is unreachable).
- ``GET /healthz`` (process up), ``GET /readyz`` (registry answers), ``GET /metrics``.
- ``POST /drain/{gateway_id}`` marks the gateway draining in the registry (placement skips it at
  once) and publishes ``DRAIN_MESSAGE`` on ``gateway_control_channel(id)``; the gateway then
  sends RECONNECT to its sessions. 404 if the gateway is not live. Internal endpoint: expose the
  router's port to operators only.

The app does not own the registry: the caller starts and closes it (``router.main`` does for
the standalone service; ``shardchat dev`` shares one registry between services).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router import metrics
from router.placement_service import NoGatewayAvailable, Placement
from shardchat.config import Settings
from shardchat.registry import (
    DRAIN_MESSAGE,
    GatewayRecord,
    Registry,
    RegistryUnavailable,
    gateway_control_channel,
)

READY_TIMEOUT_S = 2.0
MAX_KEY_CHARS = 256


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _observe_snapshot(gateways: list[GatewayRecord]) -> None:
    draining = sum(1 for g in gateways if g.draining)
    metrics.LIVE_GATEWAYS.labels("serving").set(len(gateways) - draining)
    metrics.LIVE_GATEWAYS.labels("draining").set(draining)


def create_app(
    registry: Registry, settings: Settings, *, placement: Placement | None = None
) -> Starlette:
    """The router ASGI app. ``placement`` may be shared with other services in one process."""
    placer = placement or Placement(registry)

    async def gateway(request: Request) -> Response:
        key = request.query_params.get("key") or None
        keyed = "true" if key else "false"
        if key is not None and len(key) > MAX_KEY_CHARS:
            return _error(400, "BAD_USER_INPUT", f"key longer than {MAX_KEY_CHARS} characters")
        started = time.perf_counter()
        try:
            record = await placer.choose(key)
        except NoGatewayAvailable as exc:
            metrics.PLACEMENT_REQUESTS.labels("no_gateway", keyed).inc()
            return _error(503, "NO_GATEWAY", str(exc))
        except RegistryUnavailable as exc:
            metrics.PLACEMENT_REQUESTS.labels("registry_error", keyed).inc()
            return _error(503, "REGISTRY_UNAVAILABLE", str(exc))
        finally:
            metrics.PLACEMENT_SECONDS.observe(time.perf_counter() - started)
        metrics.PLACEMENT_REQUESTS.labels("ok", keyed).inc()
        return JSONResponse({"url": record.url, "gateway_id": record.gateway_id})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(registry.ping(), READY_TIMEOUT_S)
        except (RegistryUnavailable, TimeoutError) as exc:
            return JSONResponse(
                {"status": "unavailable", "registry": str(exc) or "timeout"}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        # Why refresh here: the gauge must move even when nobody asks for a gateway.
        # suppress: keep the last value; /readyz reports the outage
        with contextlib.suppress(RegistryUnavailable):
            _observe_snapshot(await placer.live())
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def drain(request: Request) -> Response:
        gateway_id = request.path_params["gateway_id"]
        try:
            if not await registry.mark_draining(gateway_id):
                metrics.DRAIN_REQUESTS.labels("not_found").inc()
                return _error(404, "NOT_FOUND", f"gateway {gateway_id!r} is not live")
            await registry.publish(gateway_control_channel(gateway_id), DRAIN_MESSAGE)
            _observe_snapshot(await placer.live(fresh=True))  # stop placing on it right away
        except RegistryUnavailable as exc:
            metrics.DRAIN_REQUESTS.labels("registry_error").inc()
            return _error(503, "REGISTRY_UNAVAILABLE", str(exc))
        metrics.DRAIN_REQUESTS.labels("ok").inc()
        return JSONResponse({"gateway_id": gateway_id, "draining": True})

    routes: list[Any] = [
        Route("/gateway", gateway, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/drain/{gateway_id}", drain, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.registry = registry
    app.state.settings = settings
    app.state.placement = placer
    return app
