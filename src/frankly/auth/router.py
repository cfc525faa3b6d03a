"""HTTP API for sign-in (session cookie), agents and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from frankly.audit import service as audit_service
from frankly.auth import service
from frankly.auth.deps import SESSION_COOKIE, AdminOnly, CurrentAgent
from frankly.auth.models import Agent, ApiToken
from frankly.auth.schemas import (
    AgentCreate,
    AgentRead,
    LoginRequest,
    LoginResponse,
    TokenCreate,
    TokenCreated,
    TokenRead,
)
from frankly.config import get_settings
from frankly.db import DbId, SessionDep
from frankly.errors import Invalid

router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.post("/auth/login", response_model=LoginResponse)
async def login(
    body: LoginRequest, session: SessionDep, request: Request, response: Response
) -> LoginResponse:
    """Check the password and set the session cookie the inbox shares."""
    agent = await service.sign_in(
        request.app.state.db,
        session,
        email=body.email,
        password=body.password,
        ip=request.client.host if request.client else "unknown",
    )
    settings = get_settings()
    new = await service.start_session(session, agent=agent, days=settings.session_days)
    response.set_cookie(
        SESSION_COOKIE,
        new.token,
        max_age=settings.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    await audit_service.record(session, agent=agent, action="auth.login")
    return LoginResponse(agent=AgentRead.model_validate(agent), csrf_token=new.csrf_token)


@router.post("/auth/logout", status_code=204)
async def logout(request: Request, session: SessionDep, agent: CurrentAgent) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await service.end_session(session, token=token)
    await audit_service.record(session, agent=agent, action="auth.logout")
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/auth/me", response_model=AgentRead)
async def me(agent: CurrentAgent) -> Agent:
    return agent


@router.get("/agents", response_model=list[AgentRead])
async def list_agents(session: SessionDep, agent: AdminOnly) -> list[Agent]:
    return await service.list_agents(session)


@router.post("/agents", response_model=AgentRead, status_code=201)
async def create_agent(body: AgentCreate, session: SessionDep, admin: AdminOnly) -> Agent:
    return await service.create_agent(
        session,
        email=body.email,
        password=body.password,
        name=body.name,
        admin=body.admin,
        actor=admin,
    )


@router.get("/tokens", response_model=list[TokenRead])
async def list_tokens(session: SessionDep, admin: AdminOnly) -> list[ApiToken]:
    return await service.list_tokens(session)


@router.post("/tokens", response_model=TokenCreated, status_code=201)
async def create_token(body: TokenCreate, session: SessionDep, admin: AdminOnly) -> TokenCreated:
    """Create a channel or agent token; the secret is in this response only."""
    owner = None
    if body.agent_email is not None:
        owner = await service.get_agent_by_email(session, email=body.agent_email)
        if owner is None:
            raise Invalid(f"no agent with email {body.agent_email}")
    new = await service.create_token(
        session, name=body.name, channel=body.channel, agent=owner, actor=admin
    )
    return TokenCreated(**TokenRead.model_validate(new.record).model_dump(), token=new.token)


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: DbId, session: SessionDep, admin: AdminOnly) -> Response:
    await service.revoke_token(session, token_id=token_id, actor=admin)
    return Response(status_code=204)
