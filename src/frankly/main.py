"""create_app(): routers, error handlers, and the lifespan that starts and stops workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frankly import __version__
from frankly.auth.router import router as auth_router
from frankly.channels.router import router as channels_router
from frankly.channels.widget.router import router as widget_router
from frankly.config import Settings, get_settings
from frankly.conversations.router import router as conversations_router
from frankly.db import Database
from frankly.desk.router import router as desk_router
from frankly.errors import FranklyError
from frankly.inbox.pages import router as pages_router
from frankly.inbox.router import router as inbox_router
from frankly.knowledge.router import router as knowledge_router
from frankly.live.hub import Hub
from frankly.live.router import router as live_router
from frankly.worker.runner import Worker

log = logging.getLogger("frankly")
MAX_BODY_BYTES = 64 * 1024 * 1024
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Strict: only our own scripts and styles (htmx is served from the package), no inline code.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc if part not in {"body"}] or ["body"]
    return ".".join(parts)


def _wants_page(request: Request) -> bool:
    """A browser navigation to a page (not the API, not an htmx request) gets an HTML error."""
    return (
        not request.url.path.startswith(("/api/", "/healthz", "/metrics", "/static/"))
        and request.headers.get("hx-request") != "true"
        and "text/html" in request.headers.get("accept", "")
    )


def _page_error(request: Request, status: int, detail: str) -> Response:
    from frankly.inbox.web import render

    titles = {403: "Not allowed", 404: "Not found", 409: "Already done", 422: "Check the form"}
    return render(
        request,
        "error.html",
        None,
        status_code=status,
        status=status,
        title=titles.get(status, "Something went wrong"),
        detail=detail,
    )


def install_error_handlers(app: FastAPI) -> None:
    from frankly.inbox.web import LoginRequired, login_redirect_target

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.headers.get("hx-request") == "true":
            return _error(401, "unauthorized", "sign in again")
        return RedirectResponse(login_redirect_target(exc.next_path), status_code=303)

    @app.exception_handler(FranklyError)
    async def frankly_error(request: Request, exc: FranklyError) -> Response:
        if _wants_page(request):
            return _page_error(request, exc.status_code, exc.message)
        return _error(exc.status_code, exc.error, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:5]:
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{_field(err.get('loc', ()))}: {message}")
        return _error(422, "invalid", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        names = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized"}
        if _wants_page(request):
            return _page_error(request, exc.status_code, str(exc.detail))
        return _error(exc.status_code, names.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return _error(500, "internal", "unexpected server error; it has been logged")


SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


# The customer chat is public: its bodies (a message, or one ≤ 10 MiB attachment) stay small.
PUBLIC_BODY_BYTES = 11 * 1024 * 1024


def body_limit(path: str) -> int:
    return PUBLIC_BODY_BYTES if path.startswith(("/chat/", "/widget/")) else MAX_BODY_BYTES


class _BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    """Plain ASGI (cheaper than BaseHTTPMiddleware): refuse huge bodies, add security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        too_large = _error(413, "too_large", f"request body over {limit} bytes")
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await too_large(scope, receive, send)
                return
        # Chunked bodies have no Content-Length: count what arrives and stop at the limit. The
        # app may turn the aborted read into its own error (FastAPI answers 400 for a body it
        # could not read); whatever it answers then is replaced by the 413.
        received = 0
        started = False
        overflow = False

        async def counting_receive() -> Message:
            nonlocal received, overflow
            if overflow:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if overflow:
                if not started:
                    started = True
                    await too_large(scope, receive, send_with_headers_raw)
                return
            await send_with_headers_raw(message)

        async def send_with_headers_raw(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", [])
                present = {name.lower() for name, _ in headers}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                own_csp = b"".join(v for n, v in headers if n.lower() == b"content-security-policy")
                if b"frame-ancestors" in own_csp:
                    # A page that says who may frame it (the customer chat, for the merchant's
                    # site) must not be contradicted by the default X-Frame-Options.
                    extra = [(n, v) for n, v in extra if n != b"x-frame-options"]
                message["headers"] = [*headers, *extra]
            await send(message)

        try:
            await self.app(scope, counting_receive, send_with_headers)
        except _BodyTooLarge:
            if not started:
                started = True
                await too_large(scope, receive, send_with_headers_raw)


class SchemaNotReady(RuntimeError):
    pass


async def check_schema(url: str) -> None:
    """Refuse to start on a database that is not migrated to this code's revision."""
    from frankly.migrations.runner import current_heads, schema_revision

    revision = await schema_revision(url)
    if revision not in current_heads():
        raise SchemaNotReady(
            f"database schema is at {revision or 'nothing'}, this Frankly needs "
            f"{', '.join(sorted(current_heads()))}: run 'frankly db upgrade'"
        )


async def prepare_database(db: Database, settings: Settings) -> None:
    """Start-up checks that need the data: the secret key opens the stored secrets, and the
    channel accounts FRANKLY_* variables describe exist. Raises SchemaNotReady with one line."""
    from sqlalchemy.exc import DBAPIError

    from frankly.channels import accounts
    from frankly.crypto import WrongSecretKey
    from frankly.desk import service as desk_service

    try:
        async with db.writing(), db.sessionmaker() as session:
            try:
                await desk_service.verify_secret_key(session)
                await accounts.sync_env_accounts(session, settings=settings)
            except WrongSecretKey as exc:
                raise SchemaNotReady(f"FRANKLY_SECRET_KEY: {exc}") from None
            except FranklyError as exc:
                raise SchemaNotReady(
                    f"channel settings from the environment: {exc.message}"
                ) from None
            await session.commit()
    except (OSError, DBAPIError) as exc:
        # The database is down at start: serve anyway (/healthz says 503) and check later;
        # `frankly serve` runs these checks first and refuses to start on a wrong key.
        log.warning("start-up checks skipped, database unreachable: %s", exc)


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if database is None:
            await check_schema(settings.database_url)
        db = database or Database(settings.database_url)
        app.state.db = db
        await prepare_database(db, settings)
        hub = Hub(db)
        await hub.start()
        app.state.hub = hub
        worker = None
        if settings.run_workers:
            worker = Worker(
                db,
                concurrency=settings.worker_concurrency,
                poll_seconds=settings.worker_poll_seconds,
                lease_seconds=settings.job_lease_seconds,
                slow_concurrency=settings.llm_concurrency,
            )
            worker.start()
        app.state.worker = worker
        try:
            yield
        finally:
            await hub.stop()
            if worker is not None:
                await worker.stop()
            from frankly.channels.registry import REGISTRY
            from frankly.drafting.llm_jobs import close_writers

            await REGISTRY.aclose()
            await close_writers()
            if database is None:
                await db.dispose()

    app = FastAPI(
        title="Frankly",
        version=__version__,
        description="A support inbox where a disclosed assistant drafts and a person sends.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)

    app.add_middleware(EdgeMiddleware)

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(inbox_router)
    app.include_router(pages_router)
    app.include_router(live_router)
    app.include_router(auth_router)
    app.include_router(conversations_router)
    app.include_router(knowledge_router)
    app.include_router(desk_router)
    app.include_router(widget_router)
    app.include_router(channels_router)

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> JSONResponse:
        """200 when the database answers, 503 when it does not."""
        db: Database = request.app.state.db
        try:
            async with db.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"},
                status_code=503,
            )
        return JSONResponse({"status": "ok", "database": db.dialect, "version": __version__})

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
