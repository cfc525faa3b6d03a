"""HTTP API: inbound messages, conversations, and every human action on drafts."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.auth.deps import ChannelDep, CurrentAgent
from frankly.auth.models import Agent
from frankly.config import get_settings
from frankly.conversations import service
from frankly.conversations.models import (
    Conversation,
    ConversationStatus,
    Draft,
    DraftStatus,
    Message,
)
from frankly.conversations.schemas import (
    AssignRequest,
    ClaimRequest,
    ContactRead,
    ConversationDetail,
    ConversationPage,
    ConversationRead,
    DraftRead,
    InboundAccepted,
    InboundCreate,
    MessageRead,
    PreviewRequest,
    ProvenancePreview,
    RegenerateResponse,
    RewriteRequest,
    SendDraft,
    SendResponse,
    StatusRequest,
    UseFaq,
    WriteReply,
)
from frankly.db import DbId, SessionDep, after_commit, rollback
from frankly.drafting import disclosure, llm_jobs
from frankly.drafting import service as drafting_service
from frankly.errors import Conflict, Invalid
from frankly.knowledge import service as knowledge_service
from frankly.textutil import clean_text

router = APIRouter(prefix="/api/v1", tags=["conversations"])


def _limit() -> int:
    return get_settings().max_message_bytes


def _wake_worker(request: Request) -> None:
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()


@router.post("/inbound", status_code=202, response_model=InboundAccepted)
async def post_inbound(
    body: InboundCreate, identity: ChannelDep, session: SessionDep, request: Request
) -> InboundAccepted:
    """Store a customer message (channel token); deduplicated on (channel, message_id)."""
    text = clean_text(body.text, limit_bytes=_limit())
    contact = body.contact
    result = await service.ingest(
        session,
        channel=identity.channel,
        conversation_external_id=body.conversation_id,
        message_external_id=body.message_id,
        text=text,
        contact_external_id=contact.id if contact else None,
        contact_name=contact.name if contact else None,
        contact_language=contact.language if contact else None,
        context=body.context,
    )
    if not result.duplicate:
        await drafting_service.enqueue_drafting(session, message=result.message)
        after_commit(session, lambda: _wake_worker(request))
    return InboundAccepted(
        conversation_id=result.conversation.id,
        message_id=result.message.id,
        duplicate=result.duplicate,
        drafting=result.message.drafting.value if result.message.drafting else None,
    )


async def draft_read(session: AsyncSession, draft: Draft) -> DraftRead:
    slugs = await knowledge_service.slugs_by_id(
        session, ids={draft.faq_entry_id} if draft.faq_entry_id else set()
    )
    return _draft_read(draft, slugs)


def _draft_read(draft: Draft, slugs: dict[int, str]) -> DraftRead:
    return DraftRead(
        id=draft.id,
        conversation_id=draft.conversation_id,
        message_id=draft.message_id,
        status=draft.status,
        text=draft.text,
        language=draft.language,
        faq_entry=slugs.get(draft.faq_entry_id) if draft.faq_entry_id else None,
        faq_entry_id=draft.faq_entry_id,
        faq_version=draft.faq_version,
        confidence=draft.confidence,
        engine=draft.engine,
        why=draft.why,
        created_at=draft.created_at,
        flags=list(draft.flags or []),
        prompt_version=draft.prompt_version,
        tokens_in=draft.tokens_in,
        tokens_out=draft.tokens_out,
        ttft_ms=draft.ttft_ms,
    )


async def conversation_read(
    session: AsyncSession, conversation: Conversation, *, has_draft: bool
) -> ConversationRead:
    contact = await service.get_contact(session, conversation=conversation)
    return ConversationRead.model_validate(
        {
            **{
                c: getattr(conversation, c)
                for c in ConversationRead.model_fields
                if c not in {"has_draft", "contact"}
            },
            "has_draft": has_draft,
            "contact": ContactRead.model_validate(contact),
        },
        from_attributes=False,
    )


async def conversation_detail(
    session: AsyncSession, conversation: Conversation
) -> ConversationDetail:
    messages = await service.list_messages(session, conversation=conversation)
    drafts = await service.list_drafts(session, conversation=conversation)
    slugs = await knowledge_service.slugs_by_id(
        session, ids={d.faq_entry_id for d in drafts if d.faq_entry_id}
    )
    base = await conversation_read(
        session, conversation, has_draft=any(d.status == "pending" for d in drafts)
    )
    return ConversationDetail(
        **base.model_dump(exclude={"contact"}),
        contact=base.contact,
        messages=[MessageRead.model_validate(m) for m in messages],
        drafts=[_draft_read(d, slugs) for d in drafts],
    )


@router.get("/conversations", response_model=ConversationPage)
async def list_conversations(
    session: SessionDep,
    agent: CurrentAgent,
    status: ConversationStatus | None = None,
    needs_reply: bool | None = None,
    has_draft: bool | None = None,
    abstained: bool | None = None,
    assigned: str | None = None,
    channel: str | None = None,
    language: str | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ConversationPage:
    filters = service.ConversationFilters(
        status=status,
        needs_reply=needs_reply,
        has_draft=has_draft,
        abstained=abstained,
        assigned=assigned,
        channel=channel,
        language=language,
        q=q,
    )
    rows, next_cursor = await service.list_conversations(
        session, agent=agent, filters=filters, cursor=cursor, limit=limit
    )
    with_drafts = await service.pending_draft_ids(session, conversation_ids=[c.id for c in rows])
    items = [await conversation_read(session, c, has_draft=c.id in with_drafts) for c in rows]
    return ConversationPage(items=items, next_cursor=next_cursor)


@router.get("/conversations/{conversation_id}", response_model=ConversationDetail)
async def get_conversation(
    conversation_id: DbId, session: SessionDep, agent: CurrentAgent
) -> ConversationDetail:
    conversation = await service.get_conversation(session, conversation_id=conversation_id)
    return await conversation_detail(session, conversation)


async def _send(
    session: AsyncSession,
    *,
    agent: Agent,
    conversation_id: DbId,
    draft_id: int | None,
    text: str | None,
    key: str,
) -> SendResponse:
    """Run the send gate; a concurrent twin with the same key gets the first result back."""
    agent_id = agent.id
    for attempt in range(2):
        try:
            draft = await service.get_draft(session, draft_id=draft_id) if draft_id else None
            conversation = await service.get_conversation(
                session, conversation_id=draft.conversation_id if draft else conversation_id
            )
            result = await service.send_reply(
                session,
                agent=agent,
                conversation=conversation,
                text=text,
                idempotency_key=key,
                draft=draft,
                derived_threshold=get_settings().similarity_derived_threshold,
            )
            await session.flush()
            break
        except (IntegrityError, Conflict):
            if attempt:
                raise
            await rollback(session)
            refreshed = await session.get(Agent, agent_id)
            assert refreshed is not None
            agent = refreshed
    if draft is not None:
        await session.refresh(draft)
    return SendResponse(
        created=result.created,
        message=MessageRead.model_validate(result.message),
        draft=await draft_read(session, draft) if draft else None,
    )


@router.post("/drafts/{draft_id}/send", response_model=SendResponse)
async def send_draft(
    draft_id: DbId, body: SendDraft, session: SessionDep, agent: CurrentAgent
) -> SendResponse:
    """Send a draft as is (no text, or the same text) or edited (different text)."""
    text = clean_text(body.text, limit_bytes=_limit()) if body.text is not None else None
    return await _send(
        session,
        agent=agent,
        conversation_id=0,
        draft_id=draft_id,
        text=text,
        key=body.idempotency_key,
    )


@router.post("/conversations/{conversation_id}/replies", response_model=SendResponse)
async def write_reply(
    conversation_id: DbId, body: WriteReply, session: SessionDep, agent: CurrentAgent
) -> SendResponse:
    """A reply the agent wrote; any pending draft becomes superseded. No disclosure is added."""
    await service.get_conversation(session, conversation_id=conversation_id)
    text = clean_text(body.text, limit_bytes=_limit())
    return await _send(
        session,
        agent=agent,
        conversation_id=conversation_id,
        draft_id=None,
        text=text,
        key=body.idempotency_key,
    )


@router.post("/drafts/{draft_id}/preview", response_model=ProvenancePreview)
async def preview_send(
    draft_id: DbId, body: PreviewRequest, session: SessionDep, agent: CurrentAgent
) -> ProvenancePreview:
    """What sending this text would record and show the customer; writes nothing."""
    draft = await service.get_draft(session, draft_id=draft_id)
    conversation = await service.get_conversation(session, conversation_id=draft.conversation_id)
    text = clean_text(body.text, limit_bytes=_limit()) if body.text is not None else None
    provenance = await service.classify(
        session,
        conversation=conversation,
        draft=draft,
        text=text,
        threshold=get_settings().similarity_derived_threshold,
    )
    shown = provenance.body
    if provenance.disclosure is not None:
        shown = disclosure.apply(provenance.body, provenance.disclosure)
    return ProvenancePreview(
        origin=provenance.origin,
        similarity=provenance.similarity,
        disclosure_id=provenance.disclosure.id if provenance.disclosure else None,
        disclosure_text=provenance.disclosure.text if provenance.disclosure else None,
        text=shown,
    )


@router.post("/drafts/{draft_id}/discard", response_model=DraftRead)
async def discard_draft(draft_id: DbId, session: SessionDep, agent: CurrentAgent) -> DraftRead:
    draft = await service.get_draft(session, draft_id=draft_id)
    await service.discard_draft(session, agent=agent, draft=draft)
    return await draft_read(session, draft)


@router.post("/drafts/{draft_id}/regenerate", response_model=RegenerateResponse)
async def regenerate_draft(
    draft_id: DbId, session: SessionDep, agent: CurrentAgent
) -> RegenerateResponse:
    """Supersede the draft and ask the engine again, excluding the entry it used."""
    draft = await service.get_draft(session, draft_id=draft_id)
    new = await drafting_service.regenerate(session, agent=agent, draft=draft)
    conversation = await service.get_conversation(session, conversation_id=draft.conversation_id)
    return RegenerateResponse(
        draft=await draft_read(session, new) if new else None,
        suggestions=conversation.suggestions,
        streaming=new is None and draft.engine == "llm" and draft.status == DraftStatus.SUPERSEDED,
    )


@router.post("/drafts/{draft_id}/stop", response_model=DraftRead)
async def stop_draft(draft_id: DbId, session: SessionDep, agent: CurrentAgent) -> DraftRead:
    """Stop a draft the LLM is still writing; the text so far becomes the pending draft."""
    draft = await service.get_draft(session, draft_id=draft_id)
    await service.request_stop(session, agent=agent, draft=draft)
    return await draft_read(session, draft)


@router.post("/drafts/{draft_id}/rewrite", status_code=202, response_model=DraftRead)
async def rewrite_draft(
    draft_id: DbId, body: RewriteRequest, session: SessionDep, agent: CurrentAgent, request: Request
) -> DraftRead:
    """Ask the LLM for a shorter, more formal or translated version; it streams in as a new
    draft (the current one stays pending until the rewrite is ready)."""
    draft = await service.get_draft(session, draft_id=draft_id)
    await llm_jobs.request_rewrite(
        session, agent=agent, draft=draft, kind=body.kind, text=body.text
    )
    after_commit(session, lambda: _wake_worker(request))
    return await draft_read(session, draft)


@router.post("/conversations/{conversation_id}/drafts", response_model=DraftRead, status_code=201)
async def use_faq_entry(
    conversation_id: DbId, body: UseFaq, session: SessionDep, agent: CurrentAgent
) -> DraftRead:
    """Build a draft from the FAQ entry the agent picked."""
    conversation = await service.get_conversation(session, conversation_id=conversation_id)
    if isinstance(body.faq_entry, str) and not body.faq_entry.strip():
        raise Invalid("faq_entry is empty")
    entry = await knowledge_service.find_entry(session, ref=body.faq_entry)
    draft = await drafting_service.draft_from_entry(
        session, agent=agent, conversation=conversation, entry=entry
    )
    return await draft_read(session, draft)


@router.post("/conversations/{conversation_id}/claim", response_model=ConversationRead)
async def claim_conversation(
    conversation_id: DbId, body: ClaimRequest, session: SessionDep, agent: CurrentAgent
) -> ConversationRead:
    """Mark yourself as replying; another agent's claim needs `take_over: true`."""
    conversation = await service.get_conversation(session, conversation_id=conversation_id)
    await service.claim(session, agent=agent, conversation=conversation, take_over=body.take_over)
    return await _read(session, conversation)


@router.post("/conversations/{conversation_id}/release", response_model=ConversationRead)
async def release_conversation(
    conversation_id: DbId, session: SessionDep, agent: CurrentAgent
) -> ConversationRead:
    conversation = await service.get_conversation(session, conversation_id=conversation_id)
    await service.release(session, agent=agent, conversation=conversation)
    return await _read(session, conversation)


@router.post("/conversations/{conversation_id}/assign", response_model=ConversationRead)
async def assign_conversation(
    conversation_id: DbId, body: AssignRequest, session: SessionDep, agent: CurrentAgent
) -> ConversationRead:
    conversation = await service.get_conversation(session, conversation_id=conversation_id)
    await service.assign(session, agent=agent, conversation=conversation, assignee_id=body.agent_id)
    return await _read(session, conversation)


@router.post("/conversations/{conversation_id}/status", response_model=ConversationRead)
async def set_conversation_status(
    conversation_id: DbId, body: StatusRequest, session: SessionDep, agent: CurrentAgent
) -> ConversationRead:
    """Resolve, reopen or snooze (until a time) a conversation."""
    conversation = await service.get_conversation(session, conversation_id=conversation_id)
    await service.set_status(
        session,
        agent=agent,
        conversation=conversation,
        status=body.status,
        snoozed_until=body.snoozed_until,
    )
    return await _read(session, conversation)


async def _read(session: AsyncSession, conversation: Conversation) -> ConversationRead:
    drafts = await service.pending_draft_ids(session, conversation_ids=[conversation.id])
    return await conversation_read(session, conversation, has_draft=conversation.id in drafts)


@router.get("/attachments/{attachment_id}")
async def download_attachment(
    attachment_id: DbId, session: SessionDep, agent: CurrentAgent
) -> Response:
    """A customer's file, for agents only; served as a download unless it is an image."""
    from frankly.channels import service as channel_service

    row = await channel_service.get_attachment(session, attachment_id=attachment_id)
    inline = row.content_type.startswith("image/")
    # An ASCII fallback plus the real name encoded (RFC 6266): header values are latin-1.
    ascii_name = "".join(
        c if c.isascii() and (c.isalnum() or c in "._- ") else "_" for c in row.filename
    )
    disposition = (
        f'{"inline" if inline else "attachment"}; filename="{ascii_name}"; '
        f"filename*=UTF-8''{quote(row.filename, safe='')}"
    )
    return Response(
        content=row.data,
        media_type=row.content_type,
        headers={
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        },
    )


@router.post("/messages/{message_id}/retry", response_model=MessageRead)
async def retry_delivery(message_id: DbId, session: SessionDep, agent: CurrentAgent) -> Message:
    """Try a failed delivery again (same channel idempotency key, so never a duplicate)."""
    from frankly.outbox import service as outbox_service

    message = await service.get_message(session, message_id=message_id)
    await outbox_service.retry(session, agent=agent, message=message)
    return message
