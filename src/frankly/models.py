"""Imports every domain's tables so metadata (and Alembic) sees them all."""

from frankly.audit.models import AuditEvent
from frankly.auth.models import Agent, ApiToken, AuthSession, LoginAttempt
from frankly.channels.models import ChannelAccount
from frankly.conversations.models import Attachment, Contact, Conversation, Draft, Message
from frankly.db import Base
from frankly.desk.models import DeskSetting
from frankly.knowledge.models import FaqEntry, FaqVersion, LearnedExample
from frankly.live.models import Event
from frankly.outbox.models import OutboxItem
from frankly.worker.models import Job

__all__ = [
    "Agent",
    "ApiToken",
    "Attachment",
    "AuditEvent",
    "AuthSession",
    "Base",
    "ChannelAccount",
    "Contact",
    "Conversation",
    "DeskSetting",
    "Draft",
    "Event",
    "FaqEntry",
    "FaqVersion",
    "Job",
    "LearnedExample",
    "LoginAttempt",
    "Message",
    "OutboxItem",
]
