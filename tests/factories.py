"""Plain factory functions for tests: agents, tokens, FAQ entries, inbound messages, drafts."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from frankly.auth import service as auth_service
from frankly.auth.models import Agent
from frankly.db import Database, commit
from frankly.desk import service as desk_service
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.schemas import FaqEntryCreate
from frankly.worker.runner import Worker

_n = itertools.count(1)
PASSWORD = "correct-horse-battery"

FAQ = [
    {
        "slug": "payment-banks",
        "question": "Which banks can I pay from?",
        "paraphrases": [
            "which bank?",
            "what bank do you accept",
            "на какой банк переводить",
            "какие банки принимаете",
        ],
        "answers": {
            "en": "We accept transfers from T-Bank and Sber.",
            "ru": "Принимаем переводы с Т-Банка и Сбера.",
        },
    },
    {
        "slug": "payment-amount",
        "question": "How much should I send?",
        "paraphrases": [
            "how much do I pay",
            "what amount should I transfer",
            "сколько платить",
            "какую сумму переводить",
        ],
        "answers": {
            "en": "Please send exactly {{order.amount}} {{order.currency}}.",
            "ru": "Пожалуйста, переведите ровно {{order.amount}} {{order.currency}}.",
        },
    },
    {
        "slug": "paid-release",
        "question": "I paid, please release",
        "paraphrases": [
            "i paid release pls",
            "payment sent, release coins",
            "я оплатил, отпустите",
            "оплатил отпускай",
        ],
        "answers": {
            "en": "Thanks, a person will check the payment.",
            "ru": "Спасибо, сотрудник проверит оплату.",
        },
        "never_draft": True,
    },
    {
        "slug": "third-party",
        "question": "Can I pay from someone else's card?",
        "paraphrases": [
            "can I pay from my wife's card",
            "pay from a friend's account",
            "можно оплатить с карты жены",
            "с чужой карты можно",
        ],
        "answers": {
            "en": "No: the payment must come from an account in your own name.",
            "ru": "Нет: оплата должна идти со счёта на ваше имя.",
        },
    },
    {
        "slug": "working-hours",
        "question": "What are your working hours?",
        "paraphrases": [
            "when are you online",
            "are you open now",
            "часы работы",
            "когда вы работаете",
        ],
        "answers": {
            "en": "We work from 09:00 to 23:00 Moscow time.",
            "ru": "Мы работаем с 09:00 до 23:00 по Москве.",
        },
    },
]


@dataclass
class Desk:
    """A seeded desk: an admin, an agent, a channel token and the test FAQ."""

    db: Database
    admin: Agent
    agent: Agent
    channel_token: str
    agent_token: str
    admin_token: str

    def as_agent(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.agent_token}"}

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def as_channel(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.channel_token}"}


async def make_desk(db: Database, *, faq: list[dict[str, Any]] | None = None) -> Desk:
    async with db.sessionmaker() as session:
        admin = await auth_service.create_agent(
            session, email=f"admin{next(_n)}@example.com", password=PASSWORD, admin=True
        )
        agent = await auth_service.create_agent(
            session, email=f"anna{next(_n)}@example.com", password=PASSWORD, name="Anna"
        )
        channel = await auth_service.create_token(session, name="api", channel="api")
        agent_token = await auth_service.create_token(session, name="anna", agent=agent)
        admin_token = await auth_service.create_token(session, name="admin", agent=admin)
        for item in FAQ if faq is None else faq:
            await knowledge_service.create_entry(session, data=FaqEntryCreate(**item), agent=admin)
        # Too little data to fit a calibrator: confidences use the matcher's conservative scale
        # (capped at 0.75), so a desk with an FAQ this small would run at a threshold of 0.7.
        await desk_service.set_value(session, key=desk_service.THRESHOLD, value=0.7, agent=admin)
        await commit(session)
    return Desk(db, admin, agent, channel.token, agent_token.token, admin_token.token)


def key() -> str:
    return uuid.uuid4().hex


async def post_inbound(
    client: httpx.AsyncClient,
    desk: Desk,
    text: str,
    *,
    conversation_id: str = "conv-1",
    message_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/inbound",
        json={
            "conversation_id": conversation_id,
            "message_id": message_id or key(),
            "text": text,
            **extra,
        },
        headers=desk.as_channel(),
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def run_jobs(db: Database) -> int:
    return await Worker(db).drain()


async def conversation(client: httpx.AsyncClient, desk: Desk, conversation_id: int) -> Any:
    response = await client.get(f"/api/v1/conversations/{conversation_id}", headers=desk.as_agent())
    assert response.status_code == 200, response.text
    return response.json()


async def inbound_with_draft(
    client: httpx.AsyncClient, desk: Desk, text: str = "which bank do I pay to?", **extra: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post a message, run drafting, return (conversation detail, pending draft)."""
    accepted = await post_inbound(client, desk, text, **extra)
    await run_jobs(desk.db)
    detail = await conversation(client, desk, accepted["conversation_id"])
    pending = [d for d in detail["drafts"] if d["status"] == "pending"]
    assert pending, f"expected a draft for {text!r}: {detail['suggestions']}"
    return detail, pending[0]
