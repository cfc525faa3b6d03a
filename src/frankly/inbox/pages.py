"""FAQ pages (agents read, admins edit), desk settings and team & tokens (admins)."""

from __future__ import annotations

import difflib
import itertools
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup, escape
from sqlalchemy import func, select

from frankly.auth import service as auth_service
from frankly.conversations.models import Draft, DraftStatus, Message, Origin
from frankly.db import DbId, SessionDep
from frankly.desk import service as desk_service
from frankly.errors import Invalid
from frankly.inbox.router import disclosure_texts
from frankly.inbox.web import Admin, User, render
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.models import ExampleLabel
from frankly.knowledge.schemas import FaqEntryCreate, FaqEntryUpdate

router = APIRouter(include_in_schema=False)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def word_diff(before: str, after: str) -> Markup:
    """An escaped word-level diff with <del>/<ins>, for version history."""
    a, b = before.split(), after.split()
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(str(escape(" ".join(a[i1:i2]))))
        if op in {"delete", "replace"}:
            out.append(f"<del>{escape(' '.join(a[i1:i2]))}</del>")
        if op in {"insert", "replace"}:
            out.append(f"<ins>{escape(' '.join(b[j1:j2]))}</ins>")
    return Markup(" ".join(out))  # noqa: S704 - every piece is escaped above


@router.get("/faq", response_class=HTMLResponse)
async def faq_list(
    request: Request, session: SessionDep, user: User, q: str | None = None
) -> Response:
    entries = await knowledge_service.list_entries(session, q=q)
    return render(request, "faq_list.html", user, nav="faq", entries=entries, q=q or "")


async def _outcomes(session: SessionDep, entry_id: int) -> dict[str, int]:
    drafted = (
        await session.scalar(select(func.count(Draft.id)).where(Draft.faq_entry_id == entry_id))
        or 0
    )
    discarded = (
        await session.scalar(
            select(func.count(Draft.id)).where(
                Draft.faq_entry_id == entry_id, Draft.status == DraftStatus.DISCARDED
            )
        )
        or 0
    )
    result = await session.execute(
        select(Message.origin, func.count(Message.id))
        .where(Message.faq_entry_id == entry_id)
        .group_by(Message.origin)
    )
    rows = {origin: int(count) for origin, count in result.all()}
    return {
        "drafted": int(drafted),
        "sent as is": int(rows.get(Origin.DRAFT_AS_IS, 0)),
        "edited": int(rows.get(Origin.DRAFT_EDITED, 0)),
        "rewritten": int(rows.get(Origin.HUMAN_WRITTEN, 0)),
        "discarded": int(discarded),
    }


@router.get("/faq/new", response_class=HTMLResponse)
async def faq_new(request: Request, user: Admin) -> Response:
    return render(
        request, "faq_edit.html", user, nav="faq", entry=None, error=None, languages=_languages()
    )


def _languages() -> list[str]:
    from frankly.config import get_settings

    return get_settings().languages


@router.get("/faq/{slug}", response_class=HTMLResponse)
async def faq_detail(request: Request, slug: str, session: SessionDep, user: User) -> Response:
    entry = await knowledge_service.get_entry_by_slug(session, slug=slug)
    versions = await knowledge_service.list_versions(session, entry=entry)
    history = []
    for older, newer in itertools.pairwise(versions):
        changes = {}
        for lang in sorted(set(older.answers) | set(newer.answers)):
            if older.answers.get(lang) != newer.answers.get(lang):
                changes[f"answer {lang}"] = word_diff(
                    older.answers.get(lang, ""), newer.answers.get(lang, "")
                )
        if older.question != newer.question:
            changes["question"] = word_diff(older.question, newer.question)
        if older.paraphrases != newer.paraphrases:
            changes["paraphrases"] = word_diff(
                " | ".join(older.paraphrases), " | ".join(newer.paraphrases)
            )
        for flag in ("never_draft", "enabled"):
            if getattr(older, flag) != getattr(newer, flag):
                changes[flag] = Markup(f"{getattr(older, flag)} → {getattr(newer, flag)}")  # noqa: S704
        history.append({"version": newer.version, "at": newer.created_at, "changes": changes})
    examples = await knowledge_service.list_examples(session, entry=entry)
    return render(
        request,
        "faq_detail.html",
        user,
        nav="faq",
        entry=entry,
        history=list(reversed(history)),
        confirmed=[e for e in examples if e.label == ExampleLabel.CONFIRMED],
        rejected=[e for e in examples if e.label == ExampleLabel.REJECTED],
        outcomes=await _outcomes(session, entry.id),
        first=versions[0] if versions else None,
    )


def _entry_fields(form: dict[str, str]) -> dict[str, Any]:
    answers = {k.removeprefix("answer_"): v for k, v in form.items() if k.startswith("answer_")}
    return {
        "question": form.get("question", ""),
        "paraphrases": _lines(form.get("paraphrases", "")),
        "answers": answers,
        "tags": [t.strip() for t in form.get("tags", "").split(",") if t.strip()],
        "never_draft": form.get("never_draft") == "on",
        "enabled": form.get("enabled") == "on",
    }


async def _form(request: Request) -> dict[str, str]:
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post("/faq/new", response_class=HTMLResponse)
async def faq_create(request: Request, session: SessionDep, user: Admin) -> Response:
    form = await _form(request)
    try:
        data = FaqEntryCreate(slug=form.get("slug", ""), **_entry_fields(form))
    except ValueError as exc:
        return render(
            request,
            "faq_edit.html",
            user,
            nav="faq",
            entry=None,
            form=form,
            error=str(exc),
            languages=_languages(),
            status_code=422,
        )
    entry = await knowledge_service.create_entry(session, data=data, agent=user.agent)
    return RedirectResponse(f"/faq/{entry.slug}", status_code=303)


@router.get("/faq/{slug}/edit", response_class=HTMLResponse)
async def faq_edit(request: Request, slug: str, session: SessionDep, user: Admin) -> Response:
    entry = await knowledge_service.get_entry_by_slug(session, slug=slug)
    return render(
        request,
        "faq_edit.html",
        user,
        nav="faq",
        entry=entry,
        error=None,
        languages=sorted(set(_languages()) | set(entry.answers)),
    )


@router.post("/faq/{slug}/edit", response_class=HTMLResponse)
async def faq_update(request: Request, slug: str, session: SessionDep, user: Admin) -> Response:
    entry = await knowledge_service.get_entry_by_slug(session, slug=slug)
    form = await _form(request)
    try:
        data = FaqEntryUpdate(**_entry_fields(form))
    except ValueError as exc:
        return render(
            request,
            "faq_edit.html",
            user,
            nav="faq",
            entry=entry,
            form=form,
            error=str(exc),
            languages=sorted(set(_languages()) | set(entry.answers)),
            status_code=422,
        )
    await knowledge_service.update_entry(session, entry=entry, data=data, agent=user.agent)
    return RedirectResponse(f"/faq/{entry.slug}", status_code=303)


@router.post("/faq/{slug}/examples/{example_id}/remove")
async def faq_remove_example(
    slug: str, example_id: DbId, session: SessionDep, user: Admin
) -> Response:
    entry = await knowledge_service.get_entry_by_slug(session, slug=slug)
    await knowledge_service.remove_example(
        session, entry=entry, example_id=example_id, agent=user.agent
    )
    return RedirectResponse(f"/faq/{slug}#examples", status_code=303)


@router.get("/settings", response_class=HTMLResponse)
async def settings_page(
    request: Request, session: SessionDep, user: Admin, saved: bool = False
) -> Response:
    from frankly.drafting.history import threshold_table

    return render(
        request,
        "settings.html",
        user,
        nav="settings",
        saved=saved,
        threshold=await desk_service.draft_threshold(session),
        default_language=await desk_service.default_language(session),
        languages=_languages(),
        disclosures=disclosure_texts(),
        table=await threshold_table(session),
        tone_notes=await desk_service.tone_notes(session),
        llm=await _llm_view(session),
    )


async def _llm_view(session: SessionDep) -> dict[str, Any]:
    """What the settings page shows of the LLM provider: never the key itself."""
    from frankly.config import get_settings

    settings = get_settings()
    over = await desk_service.llm_overrides(session)
    effective = await desk_service.llm_config_values(session)
    return {
        "base_url": over.get("base_url") or settings.llm_base_url,
        "model": over.get("model") or settings.llm_model,
        "key_set": bool(over.get("api_key") or settings.llm_api_key),
        "timeout": over.get("timeout", settings.llm_timeout),
        "max_tokens": over.get("max_tokens", settings.llm_max_tokens),
        "temperature": over.get("temperature", settings.llm_temperature),
        "requests_per_minute": over.get("requests_per_minute", settings.llm_requests_per_minute),
        "configured": effective is not None,
        "source": "settings" if over else ("environment" if effective else None),
    }


@router.post("/settings/llm", response_class=HTMLResponse)
async def llm_settings_save(
    request: Request,
    session: SessionDep,
    user: Admin,
    base_url: Annotated[str, Form()] = "",
    model: Annotated[str, Form()] = "",
    api_key: Annotated[str, Form()] = "",
    timeout: Annotated[float, Form(gt=0, le=300)] = 20.0,
    max_tokens: Annotated[int, Form(ge=16, le=8192)] = 400,
    temperature: Annotated[float, Form(ge=0, le=2)] = 0.3,
    requests_per_minute: Annotated[int, Form(ge=1, le=100_000)] = 60,
    tone_notes: Annotated[str, Form(max_length=2000)] = "",
    clear_key: Annotated[bool, Form()] = False,
) -> Response:
    values: dict[str, Any] = {
        "base_url": base_url.strip(),
        "model": model.strip(),
        "timeout": timeout,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "requests_per_minute": requests_per_minute,
    }
    if clear_key:
        values["api_key"] = ""
    elif api_key.strip():
        values["api_key"] = api_key.strip()  # left empty: the stored key stays
    await desk_service.set_llm(session, values=values, agent=user.agent)
    await desk_service.set_value(
        session, key=desk_service.TONE_NOTES, value=tone_notes, agent=user.agent
    )
    return RedirectResponse("/settings?saved=1", status_code=303)


@router.get("/settings/channels", response_class=HTMLResponse)
async def channels_page(
    request: Request, session: SessionDep, user: Admin, saved: bool = False
) -> Response:
    from frankly.channels import accounts
    from frankly.channels.models import ChannelKind
    from frankly.outbox import service as outbox_service

    rows = []
    for account in await accounts.list_accounts(session):
        rows.append(
            {
                "account": account,
                "secrets_set": sorted(accounts.secrets_of(account)),
                "fields": accounts.FORM_FIELDS[account.kind],
                "secret_fields": sorted(accounts.SECRET_FIELDS[account.kind]),
            }
        )
    kinds = [k for k in ChannelKind if k != ChannelKind.API]
    return render(
        request,
        "channels.html",
        user,
        nav="settings",
        saved=saved,
        rows=rows,
        kinds=kinds,
        form_fields={k.value: accounts.FORM_FIELDS[k] for k in kinds},
        secret_fields={k.value: sorted(accounts.SECRET_FIELDS[k]) for k in kinds},
        outbox=await outbox_service.counts(session),
    )


@router.post("/settings/channels", response_class=HTMLResponse)
async def channels_save(request: Request, session: SessionDep, user: Admin) -> Response:
    from frankly.channels import accounts
    from frankly.channels.models import ChannelKind

    form = {k: str(v) for k, v in (await request.form()).items()}
    try:
        kind = ChannelKind(form.get("kind", ""))
    except ValueError:
        raise Invalid("kind must be one of bybit, email, widget") from None
    account = None
    if form.get("account_id"):
        account = await accounts.get_account(session, account_id=int(form["account_id"]))
        if account.kind != kind:
            raise Invalid("an account's kind cannot change")
    await accounts.save_account(
        session,
        agent=user.agent,
        kind=kind,
        name=form.get("name", ""),
        settings=accounts.coerce_form(kind, form),
        secrets={name: form.get(name, "") for name in accounts.SECRET_FIELDS[kind]},
        enabled=form.get("enabled") == "on",
        account=account,
    )
    return RedirectResponse("/settings/channels?saved=1", status_code=303)


@router.post("/settings", response_class=HTMLResponse)
async def settings_save(
    request: Request,
    session: SessionDep,
    user: Admin,
    draft_threshold: Annotated[float, Form(ge=0, le=1)],
    default_language: Annotated[str, Form()],
) -> Response:
    await desk_service.set_value(
        session, key=desk_service.THRESHOLD, value=draft_threshold, agent=user.agent
    )
    await desk_service.set_value(
        session, key=desk_service.DEFAULT_LANGUAGE, value=default_language, agent=user.agent
    )
    return RedirectResponse("/settings?saved=1", status_code=303)


async def _admin(
    request: Request, session: SessionDep, user: Admin, new_token: str | None
) -> Response:
    return render(
        request,
        "admin.html",
        user,
        nav="admin",
        agents=await auth_service.list_agents(session),
        tokens=await auth_service.list_tokens(session),
        new_token=new_token,
    )


@router.get("/admin", response_class=HTMLResponse)
async def admin_page(request: Request, session: SessionDep, user: Admin) -> Response:
    return await _admin(request, session, user, None)


@router.post("/admin/agents", response_class=HTMLResponse)
async def admin_add_agent(
    request: Request,
    session: SessionDep,
    user: Admin,
    email: Annotated[str, Form()],
    password: Annotated[str, Form()],
    name: Annotated[str, Form()] = "",
    admin: Annotated[bool, Form()] = False,
) -> Response:
    await auth_service.create_agent(
        session, email=email, password=password, name=name or None, admin=admin, actor=user.agent
    )
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/tokens", response_class=HTMLResponse)
async def admin_create_token(
    request: Request,
    session: SessionDep,
    user: Admin,
    name: Annotated[str, Form()],
    channel: Annotated[str, Form()] = "",
    agent_email: Annotated[str, Form()] = "",
) -> Response:
    owner = None
    if agent_email:
        owner = await auth_service.get_agent_by_email(session, email=agent_email)
        if owner is None:
            raise Invalid(f"no agent with email {agent_email}")
    new = await auth_service.create_token(
        session, name=name, channel=channel or None, agent=owner, actor=user.agent
    )
    # Shown once, in this response only; never stored in clear.
    return await _admin(request, session, user, new.token)


@router.post("/admin/tokens/{token_id}/revoke")
async def admin_revoke_token(token_id: DbId, session: SessionDep, user: Admin) -> Response:
    await auth_service.revoke_token(session, token_id=token_id, actor=user.agent)
    return RedirectResponse("/admin", status_code=303)
