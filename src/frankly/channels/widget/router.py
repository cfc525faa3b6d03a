"""The web chat: the customer's page `/chat/{desk}`, its JSON API and live feed, and the
embeddable script `/widget/{desk}.js` that puts a launcher and the page (in an iframe) on a
merchant's site.

Writes need the page's `X-Frankly-Widget: 1` header (a cross-site form cannot send it, and a
cross-site fetch would need a CORS preflight that is never granted), a valid visitor cookie (only
the page load mints one), and, when the browser sends one, an Origin of this host or one of the
desk's allowed origins. Writes are rate limited per address, then per visitor; the conversations
an address may start and the live sockets it may hold are capped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import time
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, WebSocket
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.websockets import WebSocketDisconnect, WebSocketState

from frankly import __version__
from frankly.channels.service import MAX_ATTACHMENT_BYTES
from frankly.channels.widget import service
from frankly.channels.widget.service import CustomerMessage, Desk
from frankly.channels.widget.visitor import (
    COOKIE,
    COOKIE_MAX_AGE,
    COOKIE_PATH,
    Limits,
    SocketCounts,
    new_visitor_id,
    sign,
    verify,
)
from frankly.config import get_settings
from frankly.db import Database, SessionDep, after_commit
from frankly.errors import Forbidden, NotFound
from frankly.live.hub import RESYNC, Hub
from frankly.live.router import same_origin
from frankly.live.service import conversation_topic
from frankly.textutil import clean_text

log = logging.getLogger("frankly.widget")
router = APIRouter(tags=["widget"])

HERE = Path(__file__).resolve().parent
STATIC = HERE.parents[1] / "static" / "widget"
_env = Environment(
    loader=FileSystemLoader(str(HERE / "templates")),
    autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals["static"] = lambda path: f"/static/{path}?v={__version__}"
templates = Jinja2Templates(env=_env)

WIDGET_HEADER = "x-frankly-widget"
CLIENT_ID = r"^[A-Za-z0-9_-]{8,64}$"
# Event kinds that change what the visitor sees; drafts, claims and the like are not relayed.
CUSTOMER_KINDS = frozenset({"message.new", "message.sent", "message.delivery"})
PING_SECONDS = 25.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408
CLOSE_TOO_MANY = 4429
CLOSE_UNAVAILABLE = 1011
IDLE_SECONDS = 600.0  # a socket with no news or client traffic for this long is closed
MAX_ID = 2**31 - 1  # message and file ids are INTEGER on PostgreSQL: larger is a 422, not a 500
ACCEPTED_FILES = "image/jpeg,image/png,image/gif,image/webp,application/pdf"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Chat with us",
        "notice": "An assistant drafts replies; a person reviews and sends each one.",
        "placeholder": "Type your message",
        "send": "Send",
        "attach": "Attach a file",
        "file_types": "JPEG, PNG, GIF, WebP or PDF, up to 10 MiB",
        "you": "You",
        "desk": "Support",
        "empty": "Write your question below; the reply appears here.",
        "conversation": "Conversation",
        "close": "Close chat",
        "sending": "Sending…",
        "failed": "Not sent.",
        "retry": "Retry",
        "network": "No connection; check your network and retry.",
        "too_big": "This file is over 10 MiB.",
        "bad_type": "Only JPEG, PNG, GIF or WebP images and PDF files can be sent.",
        "cookies": "This browser blocked the chat's cookie here; open the chat in its own tab.",
        "open_tab": "Open the chat",
        "reload": "Reload the chat",
    },
    "ru": {
        "title": "Напишите нам",
        "notice": "Ответы готовит ассистент; человек проверяет и отправляет каждый из них.",
        "placeholder": "Введите сообщение",
        "send": "Отправить",
        "attach": "Прикрепить файл",
        "file_types": "JPEG, PNG, GIF, WebP или PDF, до 10 МиБ",
        "you": "Вы",
        "desk": "Поддержка",
        "empty": "Напишите вопрос ниже; ответ появится здесь.",
        "conversation": "Переписка",
        "close": "Закрыть чат",
        "sending": "Отправляется…",
        "failed": "Не отправлено.",
        "retry": "Повторить",
        "network": "Нет соединения; проверьте сеть и повторите.",
        "too_big": "Файл больше 10 МиБ.",
        "bad_type": "Можно отправлять только изображения JPEG, PNG, GIF, WebP и файлы PDF.",
        "cookies": "Браузер заблокировал cookie чата здесь; откройте чат в отдельной вкладке.",
        "open_tab": "Открыть чат",
        "reload": "Перезагрузить чат",
    },
}


# Schemas ---------------------------------------------------------------------------------------


class SendMessage(BaseModel):
    id: Annotated[str, Field(pattern=CLIENT_ID, description="client-generated; dedupes retries")]
    text: str
    page_url: str | None = None


class AttachmentRead(BaseModel):
    id: int
    filename: str
    content_type: str
    size: int
    url: str


class MessageRead(BaseModel):
    """A message as the visitor sees it: no drafts, no provenance, no agent."""

    id: int
    author: Literal["visitor", "desk"]
    text: str
    created_at: datetime
    attachments: list[AttachmentRead]


class MessagePage(BaseModel):
    messages: list[MessageRead]
    more: bool
    started: bool


class Sent(BaseModel):
    message: MessageRead
    duplicate: bool


# Helpers ---------------------------------------------------------------------------------------


def preferred_language(header: str | None) -> str:
    """'ru' when the browser prefers Russian over English, else 'en'."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag.strip().lower().split("-")[0]))
    for _q, _i, language in sorted(ranked):
        if language in TEXTS:
            return language
    return "en"


def _secret() -> str:
    return get_settings().effective_secret()


def visitor_of(request: Request) -> tuple[str, bool]:
    """(visitor id, whether it is new); an unverifiable cookie means a new identity."""
    visitor = verify(request.cookies.get(COOKIE), secret=_secret())
    return (visitor, False) if visitor else (new_visitor_id(), True)


def set_visitor_cookie(
    request: Request, response: Response, visitor: str, *, embed: bool = False
) -> None:
    """HttpOnly, Path=/chat; SameSite=None (Secure, partitioned) when framed over https so the
    chat works inside a merchant's page, SameSite=Lax otherwise."""
    https = request.url.scheme == "https"
    response.set_cookie(
        COOKIE,
        sign(visitor, secret=_secret()),
        max_age=COOKIE_MAX_AGE,
        path=COOKIE_PATH,
        httponly=True,
        secure=https,
        samesite="none" if embed and https else "lax",
        partitioned=embed and https,
    )


def _client_ip(request: Request | WebSocket) -> str:
    """The address limits are counted by: the peer's IP, or its /64 for IPv6 (one host
    usually holds a whole /64, so single addresses would be free to rotate)."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _limits(request: Request) -> Limits:
    limits: Limits | None = getattr(request.app.state, "widget_limits", None)
    if limits is None:
        limits = request.app.state.widget_limits = Limits()
    return limits


def _sockets(websocket: WebSocket) -> SocketCounts:
    counts: SocketCounts | None = getattr(websocket.app.state, "widget_sockets", None)
    if counts is None:
        counts = websocket.app.state.widget_sockets = SocketCounts()
    return counts


def _rate_limited(request: Request, *, upload: bool, visitor: str) -> JSONResponse | None:
    exceeded = _limits(request).check(upload=upload, visitor=visitor, ip=_client_ip(request))
    return None if exceeded is None else _too_many(*exceeded)


def _too_many(wait: float, what: str) -> JSONResponse:
    seconds = max(math.ceil(wait), 1)
    return JSONResponse(
        {"error": "rate_limited", "detail": f"{what}; try again in {seconds} s"},
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


def _wake_worker(request: Request) -> None:
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()


def _origin_allowed(origin: str | None, host: str | None, desk: Desk) -> bool:
    if origin is None or same_origin(origin, host):
        return True
    return origin.rstrip("/").lower() in desk.allowed_origins


def frame_policy(desk: Desk) -> str:
    """The app's strict CSP, but frameable by the desk's allowed origins (any when unset)."""
    from frankly.main import CSP

    ancestors = " ".join(("'self'", *desk.allowed_origins)) if desk.allowed_origins else "*"
    kept = [d.strip() for d in CSP.split(";") if not d.strip().startswith("frame-ancestors")]
    return "; ".join([*kept, f"frame-ancestors {ancestors}"])


def _read(message: CustomerMessage, desk: Desk) -> MessageRead:
    base = f"/chat/{quote(desk.name, safe='')}/files"
    return MessageRead(
        id=message.id,
        author="visitor" if message.author == "visitor" else "desk",
        text=message.text,
        created_at=message.created_at,
        attachments=[
            AttachmentRead(
                id=a.id,
                filename=a.filename,
                content_type=a.content_type,
                size=a.size,
                url=f"{base}/{a.id}",
            )
            for a in message.attachments
        ],
    )


# Dependencies ----------------------------------------------------------------------------------


async def current_desk(desk: str, session: SessionDep) -> Desk:
    return await service.find_desk(session, name=desk)


DeskDep = Annotated[Desk, Depends(current_desk)]


class ReloadNeeded(Forbidden):
    """A write whose visitor cookie does not verify (tampered, or signed with an old secret)."""

    error = "reload_needed"


def guarded_visitor(request: Request, desk: DeskDep) -> str:
    """The visitor behind a write: the page's header, this site's origin, and a valid cookie
    (identities are minted only by the page load, so junk cookies cannot dodge the limits)."""
    if request.headers.get(WIDGET_HEADER) != "1":
        raise Forbidden("send this request from the chat page (X-Frankly-Widget header missing)")
    if not _origin_allowed(request.headers.get("origin"), request.headers.get("host"), desk):
        raise Forbidden("requests from this site are not allowed for this chat")
    if COOKIE not in request.cookies:
        raise Forbidden(
            "the chat's cookie is missing (blocked by the browser?); reload or open the chat "
            "in its own tab"
        )
    visitor = verify(request.cookies.get(COOKIE), secret=_secret())
    if visitor is None:
        raise ReloadNeeded("this chat session is not valid any more; reload the chat")
    return visitor


WriteVisitor = Annotated[str, Depends(guarded_visitor)]


def reading_visitor(request: Request) -> str | None:
    """The visitor reading, or None without a valid cookie (who then has nothing to read)."""
    return verify(request.cookies.get(COOKIE), secret=_secret())


ReadVisitor = Annotated[str | None, Depends(reading_visitor)]


# Pages and scripts -----------------------------------------------------------------------------


@router.get("/chat/{desk}", response_class=HTMLResponse, include_in_schema=False)
async def chat_page(
    request: Request,
    desk: DeskDep,
    embed: bool = False,
    page: Annotated[str | None, Query(max_length=2000)] = None,
) -> HTMLResponse:
    """The customer's chat page (standalone, or framed by the embed script with `embed=1`)."""
    visitor, _new = visitor_of(request)
    language = preferred_language(request.headers.get("accept-language"))
    texts = TEXTS[language]
    js_texts = {
        key: texts[key]
        for key in (
            "you",
            "desk",
            "sending",
            "failed",
            "retry",
            "network",
            "too_big",
            "bad_type",
            "cookies",
            "open_tab",
            "reload",
        )
    }
    response = templates.TemplateResponse(
        request,
        "widget/chat.html",
        {
            "desk": desk,
            "title": desk.title or texts["title"],
            "t": texts,
            "lang": language,
            "embed": embed,
            "page_url": service.page_url(page) if embed else None,
            "js_texts": js_texts,
            "accepted_files": ACCEPTED_FILES,
            "max_file_bytes": MAX_ATTACHMENT_BYTES,
        },
    )
    response.headers["content-security-policy"] = frame_policy(desk)
    response.headers["cache-control"] = "no-store"
    set_visitor_cookie(request, response, visitor, embed=embed)
    return response


@lru_cache(maxsize=1)
def _embed_script() -> bytes:
    return (STATIC / "embed.js").read_bytes()


@router.get("/widget/{desk}.js", include_in_schema=False)
async def embed_script(desk: DeskDep) -> Response:
    """The script a merchant adds to their site; it reads the desk from its own URL."""
    return Response(
        _embed_script(),
        media_type="text/javascript; charset=utf-8",
        headers={
            "cache-control": "public, max-age=300",
            "cross-origin-resource-policy": "cross-origin",
        },
    )


# JSON API --------------------------------------------------------------------------------------


@router.get("/chat/{desk}/messages", response_model=MessagePage, tags=["widget"])
async def list_messages(
    desk: DeskDep,
    visitor: ReadVisitor,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> MessagePage:
    """The visitor's conversation after message id `after` (their messages and sent replies)."""
    if visitor is None:
        return MessagePage(messages=[], more=False, started=False)
    conversation = await service.find_conversation(session, desk=desk, visitor=visitor)
    if conversation is None:
        return MessagePage(messages=[], more=False, started=False)
    rows = await service.customer_messages(session, conversation=conversation, after=after)
    return MessagePage(
        messages=[_read(service.customer_view(m), desk) for m in rows],
        more=len(rows) == service.PAGE_SIZE,
        started=True,
    )


async def _store(
    request: Request,
    response: Response,
    session: AsyncSession,
    *,
    desk: Desk,
    visitor: str,
    client_id: str,
    text: str,
    page_url: str | None,
    files: list[Any] | None = None,
) -> Sent | JSONResponse:
    if await service.find_conversation(session, desk=desk, visitor=visitor) is None:
        exceeded = _limits(request).check_new_conversation(ip=_client_ip(request))
        if exceeded is not None:
            return _too_many(*exceeded)
    context = {
        "desk": desk.name,
        "page_url": service.page_url(page_url),
        "user_agent": (request.headers.get("user-agent") or "")[:300],
        "browser_language": (request.headers.get("accept-language") or "")[:100],
    }
    result = await service.send(
        session,
        desk=desk,
        visitor=visitor,
        client_id=client_id,
        text=text,
        attachments=files,
        context=context,
        max_text_bytes=get_settings().max_message_bytes,
    )
    if not result.duplicate:
        after_commit(session, lambda: _wake_worker(request))
    response.status_code = 200 if result.duplicate else 201
    return Sent(
        message=_read(service.customer_view(result.message), desk), duplicate=result.duplicate
    )


@router.post("/chat/{desk}/messages", response_model=Sent, status_code=201, tags=["widget"])
async def send_message(
    request: Request,
    response: Response,
    body: SendMessage,
    desk: DeskDep,
    visitor: WriteVisitor,
    session: SessionDep,
) -> Sent | JSONResponse:
    """Store a visitor's message; the same `id` again returns the first (200, duplicate)."""
    limited = _rate_limited(request, upload=False, visitor=visitor)
    if limited is not None:
        return limited
    text = clean_text(body.text, limit_bytes=get_settings().max_message_bytes)
    return await _store(
        request,
        response,
        session,
        desk=desk,
        visitor=visitor,
        client_id=body.id,
        text=text,
        page_url=body.page_url,
    )


@router.post("/chat/{desk}/attachments", response_model=Sent, status_code=201, tags=["widget"])
async def send_attachment(
    request: Request,
    response: Response,
    desk: DeskDep,
    visitor: WriteVisitor,
    session: SessionDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG, GIF, WebP or PDF, ≤ 10 MiB")],
    id: Annotated[str, Form(pattern=CLIENT_ID)],
    text: Annotated[str, Form(max_length=100_000)] = "",
    page_url: Annotated[str | None, Form(max_length=2000)] = None,
) -> Sent | JSONResponse:
    """A file (with an optional caption) as one message; wrong type 422, over 10 MiB 413."""
    limited = _rate_limited(request, upload=True, visitor=visitor)
    if limited is not None:
        return limited
    data = await file.read(MAX_ATTACHMENT_BYTES + 1)
    attachment = service.checked_attachment(file.filename, data)
    caption = text.strip()
    if caption:
        caption = clean_text(caption, limit_bytes=get_settings().max_message_bytes)
    return await _store(
        request,
        response,
        session,
        desk=desk,
        visitor=visitor,
        client_id=id,
        text=caption,
        page_url=page_url,
        files=[attachment],
    )


@router.get("/chat/{desk}/files/{attachment_id}", include_in_schema=False)
async def get_file(
    attachment_id: Annotated[int, PathParam(ge=0, le=MAX_ID)],
    desk: DeskDep,
    visitor: ReadVisitor,
    session: SessionDep,
) -> Response:
    """A file from the visitor's own conversation (404 for anyone else's). Served sandboxed
    and unframeable: it is the visitor's upload, so nothing in it may run or be overlaid."""
    conversation = (
        await service.find_conversation(session, desk=desk, visitor=visitor) if visitor else None
    )
    row = await service.visitor_attachment(
        session, conversation=conversation, attachment_id=attachment_id
    )
    disposition = "inline" if row.content_type.startswith("image/") else "attachment"
    return Response(
        row.data,
        media_type=row.content_type,
        headers={
            "content-disposition": f"{disposition}; filename*=UTF-8''{quote(row.filename)}",
            "cache-control": "private, max-age=3600",
            "content-security-policy": "default-src 'none'; sandbox; frame-ancestors 'none'",
        },
    )


# Live feed -------------------------------------------------------------------------------------


@router.websocket("/chat/{desk}/ws")
async def chat_socket(websocket: WebSocket, desk: str) -> None:
    """Nudges the page ({"type": "changed"}) when its conversation changes; the page then
    refetches the message list. Raw events are never relayed: they carry draft data. Sockets
    are capped per visitor and per address (4429) and closed when idle (4408); the page
    reconnects."""
    database: Database = websocket.app.state.db
    async with database.sessionmaker() as session:
        try:
            found: Desk | None = await service.find_desk(session, name=desk)
        except NotFound:
            found = None
        if found is None or not _origin_allowed(
            websocket.headers.get("origin"), websocket.headers.get("host"), found
        ):
            await websocket.close(code=CLOSE_FORBIDDEN)  # before accept: HTTP 403
            return
        visitor = verify(websocket.cookies.get(COOKIE), secret=_secret())
        conversation = (
            await service.find_conversation(session, desk=found, visitor=visitor)
            if visitor
            else None
        )
    await websocket.accept()
    hub: Hub | None = getattr(websocket.app.state, "hub", None)
    if visitor is None:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="reload the chat page")
        return
    if conversation is None:
        await websocket.close(code=CLOSE_NOT_FOUND, reason="no conversation yet")
        return
    if hub is None:
        await websocket.close(code=CLOSE_UNAVAILABLE, reason="live updates are not running")
        return
    counts, ip = _sockets(websocket), _client_ip(websocket)
    refused = counts.acquire(visitor=visitor, ip=ip)
    if refused is not None:
        await websocket.close(code=CLOSE_TOO_MANY, reason=refused)
        return
    try:
        idle = float(getattr(websocket.app.state, "widget_idle_seconds", IDLE_SECONDS))
        await _relay(websocket, hub, conversation_topic(conversation.id), idle_seconds=idle)
    finally:
        counts.release(visitor=visitor, ip=ip)


async def _relay(websocket: WebSocket, hub: Hub, topic: str, *, idle_seconds: float) -> None:
    lock = asyncio.Lock()
    last_activity = time.monotonic()

    def active() -> None:
        nonlocal last_activity
        last_activity = time.monotonic()

    async def send(kind: str) -> None:
        async with lock:
            await websocket.send_text(json.dumps({"type": kind}))

    async def receive() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            active()

    async def relay() -> None:
        async with hub.subscribe([topic], last_event_id=None) as subscription:
            await send("ready")  # subscribed: the page fetches once, then on each nudge
            async for event in subscription:
                if event["kind"] == RESYNC or event["kind"] in CUSTOMER_KINDS:
                    active()
                    await send("changed")
            # The hub stopped or dropped us: the page reconnects and refetches.

    async def ping() -> None:
        while True:
            await asyncio.sleep(PING_SECONDS)
            await send("ping")

    async def watch_idle() -> None:
        """Return (ending the relay) once nothing happened for `idle_seconds`."""
        while True:
            left = last_activity + idle_seconds - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    tasks = [asyncio.create_task(c()) for c in (receive, relay, ping, watch_idle)]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(
            result, WebSocketDisconnect | OSError | RuntimeError
        ):
            log.error("widget socket failed", exc_info=result)
    if websocket.application_state == WebSocketState.CONNECTED:
        code, reason = (CLOSE_IDLE, "idle") if tasks[-1] in done else (1012, "reconnect")
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason=reason)
