"""The agent inbox: sign-in, the conversation list, the conversation view and every action.

Pages consume the domain services (the same send gate as the API); HTMX swaps partials.
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.audit import service as audit_service
from frankly.auth import service as auth_service
from frankly.auth.deps import SESSION_COOKIE
from frankly.auth.models import Agent
from frankly.config import get_settings
from frankly.conversations import service as conversation_service
from frankly.conversations.models import Conversation, ConversationStatus, DraftStatus
from frankly.conversations.service import ConversationFilters
from frankly.db import DbId, SessionDep
from frankly.desk import service as desk_service
from frankly.drafting import disclosure, llm_jobs
from frankly.drafting import service as drafting_service
from frankly.errors import FranklyError, Invalid
from frankly.inbox.web import User, is_htmx, render, safe_next
from frankly.knowledge import service as knowledge_service
from frankly.textutil import clean_text

router = APIRouter(include_in_schema=False)
LOGIN_CSRF_COOKIE = "frankly_login_csrf"

VIEWS: dict[str, tuple[str, ConversationFilters]] = {
    "needs_reply": (
        "Needs reply",
        ConversationFilters(status=ConversationStatus.OPEN, needs_reply=True),
    ),
    "has_draft": ("Has draft", ConversationFilters(has_draft=True)),
    "needs_human": ("Needs a human", ConversationFilters(abstained=True, needs_reply=True)),
    "mine": ("Mine", ConversationFilters(assigned="me")),
    "unassigned": (
        "Unassigned",
        ConversationFilters(assigned="none", status=ConversationStatus.OPEN),
    ),
    "resolved": ("Resolved", ConversationFilters(status=ConversationStatus.RESOLVED)),
    "all": ("All", ConversationFilters()),
}


# ---------------------------------------------------------------- sign-in


@router.get("/", response_class=RedirectResponse)
async def home() -> RedirectResponse:
    return RedirectResponse("/inbox", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, next=safe_next(next), login_csrf=token)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=3600,
    )
    return response


@router.post("/login", response_class=HTMLResponse)
async def login_submit(
    request: Request,
    session: SessionDep,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    login_csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/inbox",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, login_csrf):
        return render(
            request,
            "login.html",
            None,
            status_code=403,
            next=safe_next(next),
            login_csrf=cookie,
            error="The sign-in form expired; please try again.",
            email=email,
        )
    try:
        agent = await auth_service.sign_in(
            request.app.state.db,
            session,
            email=email,
            password=password,
            ip=request.client.host if request.client else "unknown",
        )
    except FranklyError as exc:
        return render(
            request,
            "login.html",
            None,
            status_code=exc.status_code,
            next=safe_next(next),
            login_csrf=cookie,
            error=exc.message,
            email=email,
        )
    settings = get_settings()
    new = await auth_service.start_session(session, agent=agent, days=settings.session_days)
    await audit_service.record(session, agent=agent, action="auth.login", detail={"via": "inbox"})
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        new.token,
        max_age=settings.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep, user: User) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await auth_service.end_session(session, token=token)
    await audit_service.record(session, agent=user.agent, action="auth.logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# ---------------------------------------------------------------- the list


def _filters(
    view: str, channel: str | None, language: str | None, q: str | None
) -> ConversationFilters:
    base = VIEWS.get(view, VIEWS["needs_reply"])[1]
    return ConversationFilters(
        status=base.status,
        needs_reply=base.needs_reply,
        has_draft=base.has_draft,
        abstained=base.abstained,
        assigned=base.assigned,
        channel=channel or None,
        language=language or None,
        q=(q or "").strip() or None,
    )


async def _counts(
    session: AsyncSession, agent: Agent, channel: str | None, language: str | None, q: str | None
) -> dict[str, int]:
    counts = {}
    for name in VIEWS:
        query = conversation_service.filtered_query(
            _filters(name, channel, language, q), agent=agent
        )
        counts[name] = int(
            await session.scalar(select(func.count()).select_from(query.subquery())) or 0
        )
    return counts


async def _list_context(
    session: AsyncSession,
    agent: Agent,
    *,
    view: str,
    channel: str | None,
    language: str | None,
    q: str | None,
    selected: int | None = None,
) -> dict[str, Any]:
    view = view if view in VIEWS else "needs_reply"
    rows, _cursor = await conversation_service.list_conversations(
        session, agent=agent, filters=_filters(view, channel, language, q), limit=100
    )
    ids = [c.id for c in rows]
    with_drafts = await conversation_service.pending_draft_ids(session, conversation_ids=ids)
    items = []
    for conversation in rows:
        contact = await conversation_service.get_contact(session, conversation=conversation)
        last = await conversation_service.latest_inbound(session, conversation=conversation)
        items.append(
            {
                "c": conversation,
                "contact": contact,
                "last": last,
                "has_draft": conversation.id in with_drafts,
            }
        )
    channels = sorted(set((await session.scalars(select(Conversation.channel).distinct())).all()))
    return {
        "items": items,
        "view": view,
        "views": VIEWS,
        "channel": channel or "",
        "language": language or "",
        "q": q or "",
        "selected": selected,
        "counts": await _counts(session, agent, channel, language, q),
        "channels": channels,
        "languages": get_settings().languages,
        "agents": await _agent_names(session),
    }


async def _agent_names(session: AsyncSession) -> dict[int, str]:
    return {a.id: a.name for a in (await session.scalars(select(Agent))).all()}


@router.get("/inbox", response_class=HTMLResponse)
async def inbox(
    request: Request,
    session: SessionDep,
    user: User,
    view: str = "needs_reply",
    channel: str | None = None,
    language: str | None = None,
    q: str | None = None,
) -> Response:
    context = await _list_context(
        session, user.agent, view=view, channel=channel, language=language, q=q
    )
    if is_htmx(request) and request.headers.get("hx-target") == "conversation-list":
        return render(request, "_list.html", user, **context)
    return render(request, "inbox.html", user, nav="inbox", conversation=None, **context)


# ---------------------------------------------------------------- a conversation


async def _pane_context(
    session: AsyncSession, user: User, conversation: Conversation
) -> dict[str, Any]:
    contact = await conversation_service.get_contact(session, conversation=conversation)
    messages = await conversation_service.list_messages(session, conversation=conversation)
    drafts = await conversation_service.list_drafts(session, conversation=conversation)
    pending = next((d for d in reversed(drafts) if d.status == DraftStatus.PENDING), None)
    streaming = next((d for d in reversed(drafts) if d.status == DraftStatus.STREAMING), None)
    agents = await _agent_names(session)
    entry_slugs = await knowledge_service.slugs_by_id(
        session, ids={d.faq_entry_id for d in drafts if d.faq_entry_id}
    )
    preview = None
    if pending is not None:
        preview = await conversation_service.classify(
            session, conversation=conversation, draft=pending, text=None
        )
    claim_live = conversation_service.claim_is_live(conversation)
    return {
        "conversation": conversation,
        "contact": contact,
        "messages": messages,
        "pending": pending,
        "streaming": streaming,
        "llm_enabled": await desk_service.llm_enabled(session),
        "preview": preview,
        "agents": agents,
        "entry_slugs": entry_slugs,
        "claimed_by": agents.get(conversation.claimed_by_id or 0) if claim_live else None,
        "claimed_by_me": claim_live and conversation.claimed_by_id == user.agent.id,
        "claimed_by_other": claim_live and conversation.claimed_by_id != user.agent.id,
        "faq_entries": await knowledge_service.list_entries(session, enabled_only=True),
        "new_key": uuid.uuid4().hex,
        "statuses": list(ConversationStatus),
        "context_rows": await _context_for(session, conversation),
    }


async def _context_for(session: AsyncSession, conversation: Conversation) -> list[tuple[str, str]]:
    """The side panel's facts as the conversation's channel lays them out (an order's amount,
    status and payment method; a mail's subject), else the raw context flattened."""
    from frankly.channels.registry import REGISTRY

    try:
        channel, _ = await REGISTRY.for_conversation(
            session, channel=conversation.channel, account_id=conversation.channel_account_id
        )
        fields = channel.describe_context(dict(conversation.context))
    except Exception:  # an account that can't be built must not break the inbox
        fields = []
    return [(f.label, f.value) for f in fields] or _context_rows(conversation.context)


def _context_rows(context: dict[str, Any]) -> list[tuple[str, str]]:
    """Flatten the conversation context (e.g. a P2P order) for the side panel."""
    rows: list[tuple[str, str]] = []
    for key, value in context.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", str(v)) for k, v in value.items() if not isinstance(v, dict)]
        elif not isinstance(value, list):
            rows.append((key, str(value)))
    return rows[:40]


@router.get("/inbox/c/{conversation_id}", response_class=HTMLResponse)
async def conversation_page(
    request: Request,
    conversation_id: DbId,
    session: SessionDep,
    user: User,
    view: str = "needs_reply",
    channel: str | None = None,
    language: str | None = None,
    q: str | None = None,
) -> Response:
    conversation = await conversation_service.get_conversation(
        session, conversation_id=conversation_id
    )
    pane = await _pane_context(session, user, conversation)
    if is_htmx(request) and request.headers.get("hx-target") == "conversation-pane":
        return render(request, "_conversation.html", user, **pane)
    context = await _list_context(
        session,
        user.agent,
        view=view,
        channel=channel,
        language=language,
        q=q,
        selected=conversation_id,
    )
    return render(
        request,
        "inbox.html",
        user,
        nav="inbox",
        live_topics=f"inbox conversation:{conversation_id}",
        **{**context, **pane},
    )


async def _pane(
    request: Request,
    session: AsyncSession,
    user: User,
    conversation_id: DbId,
    toast: str | None = None,
) -> Response:
    conversation = await conversation_service.get_conversation(
        session, conversation_id=conversation_id
    )
    await session.refresh(conversation)
    response = render(
        request, "_conversation.html", user, **await _pane_context(session, user, conversation)
    )
    if toast:
        # ASCII JSON: header values are latin-1, toasts may be any text.
        response.headers["HX-Trigger"] = json.dumps({"frankly:toast": toast})
    if not is_htmx(request):
        return RedirectResponse(f"/inbox/c/{conversation_id}", status_code=303)
    return response


@router.post("/inbox/c/{conversation_id}/claim", response_class=HTMLResponse)
async def claim(
    request: Request,
    conversation_id: DbId,
    session: SessionDep,
    user: User,
    take_over: Annotated[bool, Form()] = False,
) -> Response:
    conversation = await conversation_service.get_conversation(
        session, conversation_id=conversation_id
    )
    await conversation_service.claim(
        session, agent=user.agent, conversation=conversation, take_over=take_over
    )
    return await _pane(request, session, user, conversation_id)


@router.post("/inbox/d/{draft_id}/preview", response_class=HTMLResponse)
async def preview(
    request: Request,
    draft_id: DbId,
    session: SessionDep,
    user: User,
    text: Annotated[str, Form()] = "",
) -> Response:
    draft = await conversation_service.get_draft(session, draft_id=draft_id)
    conversation = await conversation_service.get_conversation(
        session, conversation_id=draft.conversation_id
    )
    try:
        body = clean_text(text, limit_bytes=get_settings().max_message_bytes)
        provenance = await conversation_service.classify(
            session,
            conversation=conversation,
            draft=draft,
            text=body,
            threshold=get_settings().similarity_derived_threshold,
        )
    except FranklyError as exc:
        return render(request, "_provenance.html", user, preview=None, problem=exc.message)
    return render(request, "_provenance.html", user, preview=provenance, problem=None)


@router.post("/inbox/d/{draft_id}/send", response_class=HTMLResponse)
async def send(
    request: Request,
    draft_id: DbId,
    session: SessionDep,
    user: User,
    text: Annotated[str, Form()],
    idempotency_key: Annotated[str, Form()],
) -> Response:
    draft = await conversation_service.get_draft(session, draft_id=draft_id)
    conversation = await conversation_service.get_conversation(
        session, conversation_id=draft.conversation_id
    )
    body = clean_text(text, limit_bytes=get_settings().max_message_bytes)
    result = await conversation_service.send_reply(
        session,
        agent=user.agent,
        conversation=conversation,
        text=body,
        idempotency_key=idempotency_key,
        draft=draft,
        derived_threshold=get_settings().similarity_derived_threshold,
    )
    origin = result.message.origin.value.replace("_", " ") if result.message.origin else "sent"
    return await _pane(request, session, user, conversation.id, toast=f"Sent ({origin})")


@router.post("/inbox/c/{conversation_id}/reply", response_class=HTMLResponse)
async def reply(
    request: Request,
    conversation_id: DbId,
    session: SessionDep,
    user: User,
    text: Annotated[str, Form()],
    idempotency_key: Annotated[str, Form()],
) -> Response:
    conversation = await conversation_service.get_conversation(
        session, conversation_id=conversation_id
    )
    body = clean_text(text, limit_bytes=get_settings().max_message_bytes)
    await conversation_service.send_reply(
        session,
        agent=user.agent,
        conversation=conversation,
        text=body,
        idempotency_key=idempotency_key,
    )
    return await _pane(request, session, user, conversation_id, toast="Sent (written by you)")


@router.post("/inbox/d/{draft_id}/discard", response_class=HTMLResponse)
async def discard(request: Request, draft_id: DbId, session: SessionDep, user: User) -> Response:
    draft = await conversation_service.get_draft(session, draft_id=draft_id)
    await conversation_service.discard_draft(session, agent=user.agent, draft=draft)
    return await _pane(request, session, user, draft.conversation_id, toast="Draft discarded")


@router.post("/inbox/d/{draft_id}/regenerate", response_class=HTMLResponse)
async def regenerate(request: Request, draft_id: DbId, session: SessionDep, user: User) -> Response:
    draft = await conversation_service.get_draft(session, draft_id=draft_id)
    new = await drafting_service.regenerate(session, agent=user.agent, draft=draft)
    if new is None and draft.engine == "llm" and draft.status == DraftStatus.SUPERSEDED:
        toast = "Writing another variant…"
    else:
        toast = "New draft" if new else "No other FAQ entry fits: see the suggestions"
    return await _pane(request, session, user, draft.conversation_id, toast=toast)


@router.post("/inbox/d/{draft_id}/stop", response_class=HTMLResponse)
async def stop(request: Request, draft_id: DbId, session: SessionDep, user: User) -> Response:
    draft = await conversation_service.get_draft(session, draft_id=draft_id)
    await conversation_service.request_stop(session, agent=user.agent, draft=draft)
    return await _pane(request, session, user, draft.conversation_id, toast="Stopping…")


@router.post("/inbox/d/{draft_id}/rewrite", response_class=HTMLResponse)
async def rewrite(
    request: Request,
    draft_id: DbId,
    session: SessionDep,
    user: User,
    kind: Annotated[str, Form()],
    text: Annotated[str | None, Form()] = None,
) -> Response:
    draft = await conversation_service.get_draft(session, draft_id=draft_id)
    await llm_jobs.request_rewrite(session, agent=user.agent, draft=draft, kind=kind, text=text)
    labels = {
        "shorter": "Shortening",
        "formal": "Making it more formal",
        "translate": "Translating",
    }
    return await _pane(
        request, session, user, draft.conversation_id, toast=f"{labels.get(kind, kind)}…"
    )


@router.post("/inbox/m/{message_id}/retry", response_class=HTMLResponse)
async def retry_delivery(
    request: Request, message_id: DbId, session: SessionDep, user: User
) -> Response:
    from frankly.outbox import service as outbox_service

    message = await conversation_service.get_message(session, message_id=message_id)
    await outbox_service.retry(session, agent=user.agent, message=message)
    return await _pane(request, session, user, message.conversation_id, toast="Retrying delivery")


@router.post("/inbox/c/{conversation_id}/use-faq", response_class=HTMLResponse)
async def use_faq(
    request: Request,
    conversation_id: DbId,
    session: SessionDep,
    user: User,
    faq_entry: Annotated[str, Form()],
) -> Response:
    conversation = await conversation_service.get_conversation(
        session, conversation_id=conversation_id
    )
    entry = await knowledge_service.find_entry(session, ref=faq_entry)
    await drafting_service.draft_from_entry(
        session, agent=user.agent, conversation=conversation, entry=entry
    )
    return await _pane(request, session, user, conversation_id, toast=f"Draft from {entry.slug}")


@router.post("/inbox/c/{conversation_id}/assign", response_class=HTMLResponse)
async def assign(
    request: Request,
    conversation_id: DbId,
    session: SessionDep,
    user: User,
    agent_id: Annotated[str, Form()] = "",
) -> Response:
    conversation = await conversation_service.get_conversation(
        session, conversation_id=conversation_id
    )
    if agent_id and not agent_id.isdigit():
        raise Invalid("no such agent")
    await conversation_service.assign(
        session,
        agent=user.agent,
        conversation=conversation,
        assignee_id=int(agent_id) if agent_id else None,
    )
    return await _pane(request, session, user, conversation_id)


@router.post("/inbox/c/{conversation_id}/status", response_class=HTMLResponse)
async def status(
    request: Request,
    conversation_id: DbId,
    session: SessionDep,
    user: User,
    status: Annotated[ConversationStatus, Form()],
    snoozed_until: Annotated[str, Form()] = "",
) -> Response:
    conversation = await conversation_service.get_conversation(
        session, conversation_id=conversation_id
    )
    until = None
    if snoozed_until:
        try:
            until = datetime.fromisoformat(snoozed_until)
        except ValueError:
            raise Invalid("snooze time is not a date and time") from None
        until = until if until.tzinfo else until.replace(tzinfo=UTC)
    await conversation_service.set_status(
        session, agent=user.agent, conversation=conversation, status=status, snoozed_until=until
    )
    return await _pane(
        request, session, user, conversation_id, toast=f"Conversation {status.value}"
    )


def disclosure_texts() -> list[tuple[str, str, str, int]]:
    rows = []
    for kind in disclosure.DisclosureKind:
        for language in get_settings().languages:
            found = disclosure.disclosure_for(kind, language)
            rows.append((kind.value, language, found.text, found.version))
    return rows
