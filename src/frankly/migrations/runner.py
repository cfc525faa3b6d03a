"""Programmatic Alembic: `frankly db upgrade` and the tests use this, no alembic.ini needed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from frankly.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    config.set_main_option(
        "file_template", "%%(year)d-%%(month).2d-%%(day).2d-%%(hour).2d%%(minute).2d_%%(slug)s"
    )
    return config


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a file-backed SQLite database (e.g. var/)."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        Path(url.removeprefix(prefix).split("?")[0]).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision` (blocking; call from sync code)."""
    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    """The same from async code: runs on a connection of our own engine."""
    ensure_sqlite_dir(url)
    config = alembic_config(url)
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:

            def _go(sync_connection: object) -> None:
                config.attributes["connection"] = sync_connection
                command.upgrade(config, revision)

            await connection.run_sync(_go)
    finally:
        await engine.dispose()


async def schema_revision(url: str) -> str | None:
    """The revision the database is at (None when it was never migrated)."""
    from sqlalchemy import text

    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            try:
                result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            except Exception:
                return None
            return result.scalar()
    finally:
        await engine.dispose()


def current_heads() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


if __name__ == "__main__":  # pragma: no cover
    import sys

    upgrade(sys.argv[1])
    asyncio.run(asyncio.sleep(0))
