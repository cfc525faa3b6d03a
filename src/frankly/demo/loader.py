"""The demo desk: a P2P merchant FAQ in English and Russian, two agents, a few conversations."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.auth import service as auth_service
from frankly.channels import accounts as channel_accounts
from frankly.channels.models import ChannelKind
from frankly.conversations import service as conversation_service
from frankly.drafting import service as drafting_service
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.files import read_faq_file
from frankly.knowledge.models import FaqEntry

DEMO_DIR = Path(__file__).resolve().parent
ADMIN_EMAIL = "admin@frankly.local"
AGENT_EMAIL = "anna@frankly.local"
DEMO_WIDGET = "demo"


@dataclass(frozen=True, slots=True)
class DemoLogin:
    email: str
    password: str
    agent_email: str
    agent_password: str


async def is_empty(session: AsyncSession) -> bool:
    entries = await session.scalar(select(func.count(FaqEntry.id)))
    return not entries and await auth_service.count_agents(session) == 0


async def load_demo(session: AsyncSession, *, password: str | None = None) -> DemoLogin:
    """Create the demo agents, FAQ and conversations (drafting jobs are queued, not run)."""
    admin_password = password or secrets.token_urlsafe(9)
    agent_password = password or secrets.token_urlsafe(9)
    admin = await auth_service.get_agent_by_email(session, email=ADMIN_EMAIL)
    if admin is None:
        admin = await auth_service.create_agent(
            session, email=ADMIN_EMAIL, password=admin_password, name="Desk Admin", admin=True
        )
    if await auth_service.get_agent_by_email(session, email=AGENT_EMAIL) is None:
        await auth_service.create_agent(
            session, email=AGENT_EMAIL, password=agent_password, name="Anna"
        )
    if await channel_accounts.find_account(session, name=DEMO_WIDGET) is None:
        # The customer chat page of the demo desk: /chat/demo
        await channel_accounts.save_account(
            session,
            agent=admin,
            kind=ChannelKind.WIDGET,
            name=DEMO_WIDGET,
            settings={"title": "Frankly demo desk", "greeting": "Ask us about your order."},
            secrets={},
        )
    entries = read_faq_file(DEMO_DIR / "faq.yaml")
    await knowledge_service.import_entries(session, entries=entries, agent=admin)
    conversations: list[dict[str, Any]] = yaml.safe_load(
        (DEMO_DIR / "conversations.yaml").read_text(encoding="utf-8")
    )
    for conv in conversations:
        contact = conv.get("contact") or {}
        for n, text in enumerate(conv["messages"], start=1):
            result = await conversation_service.ingest(
                session,
                channel=conv["channel"],
                conversation_external_id=str(conv["conversation_id"]),
                message_external_id=f"{conv['conversation_id']}-{n}",
                text=text,
                contact_name=contact.get("name"),
                contact_language=contact.get("language"),
                context=conv.get("context"),
            )
            if not result.duplicate:
                await drafting_service.enqueue_drafting(session, message=result.message)
    return DemoLogin(ADMIN_EMAIL, admin_password, AGENT_EMAIL, agent_password)
