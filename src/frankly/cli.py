"""The `frankly` command: serve, worker, db, demo, faq import/export, agents, tokens, eval."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.config import Settings, SettingsError, load_settings
from frankly.errors import FranklyError

app = typer.Typer(
    help="Frankly: a support inbox where a disclosed assistant drafts and a person sends.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
faq_app = typer.Typer(help="Import and export the FAQ (YAML or CSV).", no_args_is_help=True)
agent_app = typer.Typer(help="Agents who review and send replies.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for channels and integrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(faq_app, name="faq")
app.add_typer(agent_app, name="agent")
app.add_typer(token_app, name="token")

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _in_session(func: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `func` in one committed transaction on the configured database."""
    from frankly.db import Database, commit

    settings = _settings()

    async def run() -> T:
        database = Database(settings.database_url)
        try:
            async with database.sessionmaker() as session:
                result = await func(session)
                await commit(session)
                return result
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except FranklyError as exc:
        raise _fail(exc.message) from None
    except OSError as exc:
        raise _fail(f"cannot reach the database: {exc}") from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[bool, typer.Option(help="Run background workers in this process.")] = True,
) -> None:
    """Serve the inbox and the API (background workers run inside unless --no-workers)."""
    settings = _settings()
    import uvicorn

    from frankly.db import Database
    from frankly.main import SchemaNotReady, check_schema, create_app, prepare_database

    async def checks() -> None:
        await check_schema(settings.database_url)
        database = Database(settings.database_url)
        try:
            await prepare_database(database, settings)
        finally:
            await database.dispose()

    try:
        asyncio.run(checks())
    except SchemaNotReady as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot reach the database: {exc}") from None
    if not workers:
        settings = settings.model_copy(update={"run_workers": False})
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Jobs run at once.")] = 1,
) -> None:
    """Run background jobs (drafting…) in a separate process, for scale-out."""
    from frankly.db import Database
    from frankly.worker.runner import Worker

    settings = _settings()

    async def run() -> None:
        database = Database(settings.database_url)
        runner = Worker(
            database,
            concurrency=concurrency,
            poll_seconds=settings.worker_poll_seconds,
            lease_seconds=settings.job_lease_seconds,
            slow_concurrency=settings.llm_concurrency,
        )
        console.print(
            f"worker {runner.id} polling {database.dialect} every {settings.worker_poll_seconds}s"
        )
        try:
            await runner.run_forever()
        finally:
            await database.dispose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations (creates the SQLite file under var/ when needed)."""
    from frankly.migrations.runner import upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url, revision)
    except OSError as exc:
        raise _fail(f"cannot reach the database: {exc}") from None
    console.print(f"database at revision {revision}")


@app.command()
def demo(
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="Do nothing when the database has data.")
    ] = False,
    password: Annotated[
        str | None, typer.Option(help="Use this password for the demo agents (default: random).")
    ] = None,
) -> None:
    """Load the demo desk: P2P merchant FAQ (en/ru), two agents, a few conversations."""
    from frankly.demo.loader import is_empty, load_demo

    async def run(session: AsyncSession) -> Any:
        if if_empty and not await is_empty(session):
            return None
        return await load_demo(session, password=password)

    login = _in_session(run)
    if login is None:
        console.print(
            "demo desk: the database already has data; nothing loaded. "
            "Sign in with the login printed when it was created, or add one with "
            "'frankly agent add EMAIL --admin'."
        )
        return
    _drain()
    settings = _settings()
    console.print("[bold]demo desk loaded[/bold]")
    console.print(f"  admin: {login.email}  password: {login.password}", highlight=False)
    console.print(
        f"  agent: {login.agent_email}  password: {login.agent_password}", highlight=False
    )
    console.print(
        f"  customer chat: http://{settings.host}:{settings.port}/chat/demo", highlight=False
    )
    if settings.is_sqlite:
        target = Path("var/demo-login.txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            f"admin {login.email} {login.password}\nagent {login.agent_email} "
            f"{login.agent_password}\n",
            encoding="utf-8",
        )
        target.chmod(0o600)


def _drain() -> None:
    """Run queued jobs to completion once (so the demo has its drafts before serving)."""
    from frankly.db import Database
    from frankly.worker.runner import Worker

    settings = _settings()

    async def run() -> int:
        database = Database(settings.database_url)
        try:
            return await Worker(database).drain()
        finally:
            await database.dispose()

    asyncio.run(run())


@faq_app.command("import")
def faq_import(
    file: Annotated[Path, typer.Argument(help="A .yaml/.yml or .csv FAQ file.")],
) -> None:
    """Upsert FAQ entries by slug; a bad file is rejected whole, naming line and field."""
    from frankly.knowledge import service
    from frankly.knowledge.files import read_faq_file

    try:
        entries = read_faq_file(file)
    except FranklyError as exc:
        raise _fail(exc.message) from None

    async def run(session: AsyncSession) -> Any:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"importing {file.name}", total=len(entries))
            return await service.import_entries(
                session,
                entries=entries,
                agent=None,
                progress=lambda n: progress.advance(task, n),
            )

    report = _in_session(run)
    console.print(
        f"{file.name}: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged"
    )


@faq_app.command("export")
def faq_export(
    file: Annotated[Path, typer.Argument(help="Where to write (.yaml/.yml or .csv).")],
) -> None:
    """Write the whole FAQ in the import format."""
    from frankly.knowledge import service
    from frankly.knowledge.files import dump_faq, file_format

    try:
        fmt = file_format(file.name)
    except FranklyError as exc:
        raise _fail(exc.message) from None
    entries = _in_session(lambda session: service.export_entries(session))
    with Progress(console=console, transient=True) as progress:
        progress.add_task(f"writing {file.name}", total=None)
        file.write_text(dump_faq(entries, fmt=fmt), encoding="utf-8")
    console.print(f"{file}: {len(entries)} entries")


@agent_app.command("add")
def agent_add(
    email: Annotated[str, typer.Argument(help="The agent's email (their login).")],
    admin: Annotated[bool, typer.Option("--admin", help="Make them an admin.")] = False,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Add an agent (prompts for the password unless --password-stdin)."""
    from frankly.auth import service

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def run(session: AsyncSession) -> Any:
        return await service.create_agent(
            session, email=email, password=password, name=name, admin=admin
        )

    agent = _in_session(run)
    console.print(f"added {agent.role.value} {agent.email}", highlight=False)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for.")],
    channel: Annotated[
        str | None, typer.Option(help="A channel token for this channel (inbound only).")
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="An agent token acting as the agent with this email.")
    ] = None,
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    from frankly.auth import service

    if (channel is None) == (agent is None):
        raise _fail("give exactly one of --channel NAME or --agent EMAIL", 2)

    async def run(session: AsyncSession) -> Any:
        owner = None
        if agent is not None:
            owner = await service.get_agent_by_email(session, email=agent)
            if owner is None:
                raise FranklyError(f"no agent with email {agent}")
        return await service.create_token(session, name=name, channel=channel, agent=owner)

    new = _in_session(run)
    print(new.token)


@app.command("eval")
def eval_command(
    faq: Annotated[Path, typer.Option(help="FAQ file (YAML or CSV import format).")],
    examples: Annotated[Path, typer.Option(help="EXAMPLES.csv: text,faq_id (learned examples).")],
    queries: Annotated[Path, typer.Option(help="QUERIES.csv: text,faq_id (empty = out of scope).")],
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    target_precision: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Pick the lowest threshold reaching this precision."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure the offline drafting engine on your own data."""
    from frankly.drafting.evaluation import EvalFileError, evaluate, load_labelled_csv
    from frankly.drafting.matcher import EntryText
    from frankly.knowledge.files import read_faq_file

    if threshold is not None and target_precision is not None:
        raise _fail("give --threshold or --target-precision, not both", 2)
    try:
        entries = [
            EntryText(
                key=e.slug,
                question=e.question,
                paraphrases=tuple(e.paraphrases),
                answers=dict(e.answers),
            )
            for e in read_faq_file(faq)
        ]
        known = {entry.key for entry in entries}
        labelled_examples = load_labelled_csv(examples, known=known, require_key=True)
        labelled_queries = load_labelled_csv(queries, known=known)
        example_pairs = [(text, key) for text, key in labelled_examples if key is not None]
        report = evaluate(
            entries,
            example_pairs,
            labelled_queries,
            threshold=threshold,
            target_precision=target_precision,
        )
    except (EvalFileError, FranklyError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        console.print(f"{key:>16}  {shown}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
