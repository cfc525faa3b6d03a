"""Channel accounts: secrets encrypted at rest (AES-GCM), write-only over the API, a wrong
FRANKLY_SECRET_KEY is a clear start-up error, FRANKLY_* variables define headless accounts."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from frankly.channels import accounts
from frankly.channels.models import ChannelKind
from frankly.config import get_settings
from frankly.crypto import SecretBox, WrongSecretKey
from frankly.db import Database, commit
from frankly.desk import service as desk_service
from frankly.main import SchemaNotReady, prepare_database
from frankly.migrations.runner import upgrade_async
from tests.factories import make_desk

FRANKLY = Path(sys.executable).parent / "frankly"
BYBIT = {"kind": "bybit", "name": "p2p-main", "settings": {"base_url": "https://api.bybit.com"}}


class TestSecretBox:
    def test_round_trip_and_purpose_binding(self) -> None:
        box = SecretBox("a-long-enough-secret-key")
        token = box.encrypt("s3cret", purpose="channel:1")
        assert token.startswith("v1:") and "s3cret" not in token
        assert box.decrypt(token, purpose="channel:1") == "s3cret"
        # Copying one account's secrets onto another account does not decrypt.
        with pytest.raises(WrongSecretKey):
            box.decrypt(token, purpose="channel:2")

    def test_a_wrong_key_or_a_tampered_token_is_an_error_never_garbage(self) -> None:
        token = SecretBox("a-long-enough-secret-key").encrypt("s3cret")
        with pytest.raises(WrongSecretKey, match="FRANKLY_SECRET_KEY"):
            SecretBox("another-long-secret-key").decrypt(token)
        raw = bytearray(base64.urlsafe_b64decode(token[3:]))
        raw[-1] ^= 0x01  # one bit of the tag
        flipped = "v1:" + base64.urlsafe_b64encode(bytes(raw)).decode()
        with pytest.raises(WrongSecretKey):
            SecretBox("a-long-enough-secret-key").decrypt(flipped)
        with pytest.raises(WrongSecretKey):
            SecretBox("a-long-enough-secret-key").decrypt("plain text")


class TestAccountsApi:
    async def test_secrets_are_write_only_and_encrypted_in_the_database(
        self, client: Any, db: Any
    ) -> None:
        desk = await make_desk(db)
        body = {**BYBIT, "secrets": {"api_key": "KEY-123", "api_secret": "SECRET-456"}}
        created = await client.post("/api/v1/channels", json=body, headers=desk.as_admin())
        assert created.status_code == 201, created.text
        assert "SECRET-456" not in created.text and "KEY-123" not in created.text
        assert created.json()["secrets_set"] == ["api_key", "api_secret"]
        listed = await client.get("/api/v1/channels", headers=desk.as_admin())
        assert "SECRET-456" not in listed.text
        async with db.sessionmaker() as session:
            raw = (await session.execute(text("SELECT secrets FROM channel_accounts"))).scalar()
            assert raw and "SECRET-456" not in raw and raw.startswith("v1:")
            account = await accounts.find_account(session, name="p2p-main")
            assert account is not None
            assert accounts.secrets_of(account)["api_secret"] == "SECRET-456"
        # An update that leaves a secret empty keeps it.
        account_id = created.json()["id"]
        update = {**BYBIT, "settings": {**BYBIT["settings"], "poll_seconds": 3}, "secrets": {}}
        changed = await client.put(
            f"/api/v1/channels/{account_id}", json=update, headers=desk.as_admin()
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["secrets_set"] == ["api_key", "api_secret"]
        # Pointing it at another server without typing the secrets again is refused: stored
        # secrets never follow an account somewhere else.
        moved = {**BYBIT, "settings": {"base_url": "https://attacker.example"}, "secrets": {}}
        refused = await client.put(
            f"/api/v1/channels/{account_id}", json=moved, headers=desk.as_admin()
        )
        assert refused.status_code == 422 and "again" in refused.json()["detail"]
        moved["secrets"] = {"api_key": "NEW-KEY", "api_secret": "NEW-SECRET"}
        accepted = await client.put(
            f"/api/v1/channels/{account_id}", json=moved, headers=desk.as_admin()
        )
        assert accepted.status_code == 200, accepted.text
        async with db.sessionmaker() as session:
            account = await accounts.find_account(session, name="p2p-main")
            assert account is not None
            assert accounts.secrets_of(account) == {
                "api_key": "NEW-KEY",
                "api_secret": "NEW-SECRET",
            }

    async def test_bad_accounts_are_clear_422s_and_409s(self, client: Any, db: Any) -> None:
        desk = await make_desk(db)
        missing = await client.post("/api/v1/channels", json=BYBIT, headers=desk.as_admin())
        assert missing.status_code == 422 and "api_key" in missing.json()["detail"]
        bad_url = {**BYBIT, "settings": {"base_url": "ftp://x"}, "secrets": {"api_key": "k"}}
        response = await client.post("/api/v1/channels", json=bad_url, headers=desk.as_admin())
        assert response.status_code == 422
        secret_in_settings = {**BYBIT, "settings": {"api_secret": "oops"}}
        response = await client.post(
            "/api/v1/channels", json=secret_in_settings, headers=desk.as_admin()
        )
        assert response.status_code == 422 and "secrets" in response.json()["detail"]
        widget = {"kind": "widget", "name": "site"}
        assert (
            await client.post("/api/v1/channels", json=widget, headers=desk.as_admin())
        ).status_code == 201
        again = await client.post("/api/v1/channels", json=widget, headers=desk.as_admin())
        assert again.status_code == 409
        bad_name = await client.post(
            "/api/v1/channels", json={"kind": "widget", "name": "a b/c"}, headers=desk.as_admin()
        )
        assert bad_name.status_code == 422 and "name" in bad_name.json()["detail"]


class TestStartUp:
    async def test_env_variables_define_an_account_once(
        self, db: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FRANKLY_BYBIT_BASE_URL", "https://api-testnet.bybit.com")
        monkeypatch.setenv("FRANKLY_BYBIT_API_KEY", "env-key")
        monkeypatch.setenv("FRANKLY_BYBIT_API_SECRET", "env-secret")
        get_settings.cache_clear()
        for _ in range(2):
            await prepare_database(db, get_settings())
        async with db.sessionmaker() as session:
            [account] = await accounts.list_accounts(session)
            assert account.name == "bybit-env" and account.kind == ChannelKind.BYBIT
            assert accounts.secrets_of(account) == {
                "api_key": "env-key",
                "api_secret": "env-secret",
            }

    async def test_a_wrong_secret_key_stops_the_start(
        self, db: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FRANKLY_SECRET_KEY", "the-first-secret-key-0001")
        get_settings.cache_clear()
        async with db.sessionmaker() as session:
            await desk_service.ensure_secret_check(session)
            await commit(session)
        await prepare_database(db, get_settings())  # the right key: fine
        monkeypatch.setenv("FRANKLY_SECRET_KEY", "a-different-secret-key-002")
        get_settings.cache_clear()
        with pytest.raises(SchemaNotReady, match="FRANKLY_SECRET_KEY"):
            await prepare_database(db, get_settings())

    async def test_frankly_serve_prints_one_line_and_exits(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'f.db'}"
        await upgrade_async(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRANKLY_")}
        env |= {
            "FRANKLY_DATABASE_URL": url,
            "FRANKLY_SECRET_KEY": "the-first-secret-key-0001",
            "FRANKLY_BYBIT_BASE_URL": "https://api.bybit.com",
            "FRANKLY_BYBIT_API_KEY": "k",
            "FRANKLY_BYBIT_API_SECRET": "s",
        }
        for name, value in env.items():
            if name.startswith("FRANKLY_"):
                monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        database = Database(url)
        try:
            await prepare_database(database, get_settings())  # stores the account, encrypted
        finally:
            await database.dispose()
        env["FRANKLY_SECRET_KEY"] = "a-different-secret-key-002"
        started = await asyncio.to_thread(
            subprocess.run,
            [str(FRANKLY), "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert started.returncode == 1
        assert "error: FRANKLY_SECRET_KEY: stored secrets cannot be decrypted" in " ".join(
            started.stderr.split()
        )
