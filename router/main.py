"""The standalone router service: ``python -m router.main`` (or ``shardchat router`` once the CLI
wires it). Owns its registry: started on startup, closed on shutdown.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from router.app import create_app
from shardchat.config import Settings, load_settings
from shardchat.runtime import open_registry


def create_service_app(settings: Settings) -> Starlette:
    """``create_app`` plus a lifespan that starts and closes the registry."""
    registry = open_registry(settings)
    app = create_app(registry, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.close()

    app.router.lifespan_context = lifespan
    return app


def main() -> None:
    import uvicorn

    settings = load_settings()
    uvicorn.run(
        create_service_app(settings),
        host=settings.host,
        port=settings.router_port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
