"""Test-only: an app with the live hub and the /ws route, whether or not create_app wires them yet.

`uvicorn --factory tests.live.launcher:build` runs one app instance (the multi-instance test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from frankly.live.hub import Hub
from frankly.live.router import router as live_router
from frankly.main import create_app


def ensure_live(app: FastAPI) -> FastAPI:
    """Include the live router and start a hub after the app's own startup if it started none."""
    if not any(getattr(route, "path", None) == "/ws" for route in app.routes):
        app.include_router(live_router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            hub: Hub | None = None
            if getattr(application.state, "hub", None) is None:
                hub = Hub(application.state.db)
                await hub.start()
                application.state.hub = hub
            try:
                yield state
            finally:
                if hub is not None:
                    await hub.stop()
                    application.state.hub = None

    app.router.lifespan_context = lifespan
    return app


def build() -> FastAPI:
    return ensure_live(create_app())
