"""API shapes for sign-in, agents and tokens."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from frankly.auth.models import Role, TokenKind


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class AgentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    role: Role
    is_active: bool


class LoginResponse(BaseModel):
    agent: AgentRead
    csrf_token: str


class AgentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=8, max_length=1024)
    name: str | None = Field(default=None, max_length=200)
    admin: bool = False


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    channel: str | None = Field(default=None, min_length=1, max_length=50)
    agent_email: str | None = Field(default=None, max_length=320)


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: TokenKind
    channel: str | None
    agent_id: int | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str
