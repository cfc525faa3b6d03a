"""HTTP API for the FAQ: agents read, admins write; import/export in the file formats."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Response, UploadFile

from frankly.auth.deps import AdminOnly, CurrentAgent
from frankly.db import DbId, SessionDep
from frankly.errors import Invalid, TooLarge
from frankly.knowledge import files, service
from frankly.knowledge.models import FaqEntry, FaqVersion, LearnedExample
from frankly.knowledge.schemas import (
    FaqEntryCreate,
    FaqEntryRead,
    FaqEntryUpdate,
    FaqVersionRead,
    ImportReport,
    LearnedExampleRead,
)

router = APIRouter(prefix="/api/v1/faq", tags=["faq"])


@router.get("", response_model=list[FaqEntryRead])
async def list_entries(
    session: SessionDep,
    agent: CurrentAgent,
    q: Annotated[str | None, Query(max_length=200)] = None,
    enabled: bool | None = None,
) -> list[FaqEntry]:
    entries = await service.list_entries(session, q=q, enabled=enabled)
    return entries


@router.post("", response_model=FaqEntryRead, status_code=201)
async def create_entry(body: FaqEntryCreate, session: SessionDep, agent: AdminOnly) -> FaqEntry:
    return await service.create_entry(session, data=body, agent=agent)


@router.get("/export")
async def export_entries(
    session: SessionDep, agent: CurrentAgent, format: Literal["yaml", "csv"] = "yaml"
) -> Response:
    """The whole FAQ in the import format (YAML or CSV)."""
    body = files.dump_faq(await service.export_entries(session), fmt=format)
    media = "application/yaml" if format == "yaml" else "text/csv"
    return Response(
        body,
        media_type=f"{media}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="faq.{format}"'},
    )


@router.post("/import", response_model=ImportReport)
async def import_entries(
    session: SessionDep, agent: AdminOnly, file: Annotated[UploadFile, File()]
) -> ImportReport:
    """Upsert entries by slug from a YAML or CSV file; a bad file changes nothing."""
    name = file.filename or "upload"
    fmt = files.file_format(name)
    data = await file.read(files.MAX_FILE_BYTES + 1)
    if len(data) > files.MAX_FILE_BYTES:
        raise TooLarge(f"{name}: file is larger than {files.MAX_FILE_BYTES // 2**20} MiB")
    entries = files.parse_faq_bytes(data, name=name, fmt=fmt)
    if not entries:
        raise Invalid(f"{name}: no FAQ entries in the file")
    return await service.import_entries(session, entries=entries, agent=agent)


@router.get("/{ref}", response_model=FaqEntryRead)
async def get_entry(ref: str, session: SessionDep, agent: CurrentAgent) -> FaqEntry:
    return await service.find_entry(session, ref=ref)


@router.patch("/{ref}", response_model=FaqEntryRead)
async def update_entry(
    ref: str, body: FaqEntryUpdate, session: SessionDep, agent: AdminOnly
) -> FaqEntry:
    entry = await service.find_entry(session, ref=ref)
    return await service.update_entry(session, entry=entry, data=body, agent=agent)


@router.delete("/{ref}", status_code=204)
async def delete_entry(ref: str, session: SessionDep, agent: AdminOnly) -> Response:
    entry = await service.find_entry(session, ref=ref)
    await service.delete_entry(session, entry=entry, agent=agent)
    return Response(status_code=204)


@router.get("/{ref}/versions", response_model=list[FaqVersionRead])
async def list_versions(ref: str, session: SessionDep, agent: CurrentAgent) -> list[FaqVersion]:
    entry = await service.find_entry(session, ref=ref)
    return await service.list_versions(session, entry=entry)


@router.get("/{ref}/versions/{version}", response_model=FaqVersionRead)
async def get_version(
    ref: str, version: int, session: SessionDep, agent: CurrentAgent
) -> FaqVersion:
    entry = await service.find_entry(session, ref=ref)
    return await service.get_version(session, entry=entry, version=version)


@router.get("/{ref}/examples", response_model=list[LearnedExampleRead])
async def list_examples(ref: str, session: SessionDep, agent: CurrentAgent) -> list[LearnedExample]:
    entry = await service.find_entry(session, ref=ref)
    return await service.list_examples(session, entry=entry)


@router.delete("/{ref}/examples/{example_id}", status_code=204)
async def remove_example(
    ref: str, example_id: DbId, session: SessionDep, agent: AdminOnly
) -> Response:
    entry = await service.find_entry(session, ref=ref)
    await service.remove_example(session, entry=entry, example_id=example_id, agent=agent)
    return Response(status_code=204)
