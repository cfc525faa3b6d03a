"""Settings from FRANKLY_* environment variables (and an optional TOML file); validated at start."""

from __future__ import annotations

import os
import secrets
import time
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parent


def _default_prompts_dir() -> Path:
    bundled = PACKAGE_DIR / "_prompts"
    return bundled if bundled.is_dir() else REPO_ROOT / "prompts"


class Settings(BaseSettings):
    """Every knob Frankly reads; the README documents each one."""

    model_config = SettingsConfigDict(env_prefix="FRANKLY_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///var/frankly.db"
    secret_key: str = Field(default="", description="Signs sessions; required outside development.")
    env: str = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    prompts_dir: Path = Field(default_factory=_default_prompts_dir)
    default_language: str = "en"
    languages: list[str] = Field(default_factory=lambda: ["en", "ru"])
    draft_threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    max_message_bytes: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)
    similarity_derived_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    run_workers: bool = True
    worker_concurrency: int = Field(default=1, ge=1, le=64)
    worker_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    job_lease_seconds: int = Field(default=120, ge=5)
    session_days: int = Field(default=14, ge=1, le=365)
    event_retention_days: int = Field(default=7, ge=1, le=3650)
    log_level: str = "INFO"
    # An optional OpenAI-compatible provider (OpenRouter, OpenAI, Ollama, vLLM) that writes drafts
    # from the matched FAQ entries. Admins can override these in Settings (key stored encrypted).
    llm_base_url: str = ""
    llm_api_key: str = Field(default="", repr=False)
    llm_model: str = ""
    llm_timeout: float = Field(default=20.0, gt=0, le=300)
    llm_max_tokens: int = Field(default=400, ge=16, le=8192)
    llm_temperature: float = Field(default=0.3, ge=0.0, le=2.0)
    llm_requests_per_minute: int = Field(default=60, ge=1, le=100_000)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    llm_concurrency: int = Field(default=4, ge=1, le=64)
    llm_history_messages: int = Field(default=6, ge=0, le=50)
    # The LLM is asked only when the matcher found an entry at least this close.
    llm_min_confidence: float = Field(default=0.35, ge=0.0, le=1.0)
    # Headless channel setup (the inbox's Settings → Channels does the same with a form).
    bybit_base_url: str = ""
    bybit_api_key: str = Field(default="", repr=False)
    bybit_api_secret: str = Field(default="", repr=False)
    bybit_poll_seconds: float = Field(default=5.0, ge=0.2, le=3600)
    imap_host: str = ""
    imap_port: int = Field(default=993, ge=1, le=65535)
    imap_user: str = ""
    imap_password: str = Field(default="", repr=False)
    imap_tls: str = "ssl"
    imap_mailbox: str = "INBOX"
    imap_poll_seconds: float = Field(default=30.0, ge=0.2, le=3600)
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str = ""
    smtp_password: str = Field(default="", repr=False)
    smtp_tls: str = "starttls"
    smtp_from: str = ""

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_length(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        if not value or any(len(code) != 2 or not code.isalpha() for code in value):
            raise ValueError("must be a non-empty list of two-letter language codes")
        return [code.lower() for code in value]

    @field_validator("imap_tls", "smtp_tls")
    @classmethod
    def _tls_mode(cls, value: str) -> str:
        if value not in {"ssl", "starttls", "none"}:
            raise ValueError("must be one of ssl, starttls, none")
        return value

    @field_validator("llm_base_url", "bybit_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url and self.llm_model)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _production_needs_secret(self) -> Settings:
        if self.env == "production" and not self.secret_key:
            raise ValueError("FRANKLY_SECRET_KEY is required when FRANKLY_ENV=production")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def effective_secret(self) -> str:
        """The secret that signs visitor cookies and keys the secrets at rest. Without
        FRANKLY_SECRET_KEY (development only; production refuses to start) it is a random key
        made once and kept in var/secret-key, never a value anyone could look up."""
        return self.secret_key or _local_secret()


LOCAL_SECRET_FILE = Path("var/secret-key")


@lru_cache(maxsize=1)
def _local_secret() -> str:
    path = LOCAL_SECRET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32))
    for _ in range(50):  # another process may be writing it this very moment
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
        time.sleep(0.01)
    raise SettingsError(f"FRANKLY_SECRET_KEY: {path} is empty; delete it or set the variable")


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it."""


def _toml_values() -> dict[str, Any]:
    path = os.environ.get("FRANKLY_CONFIG")
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"FRANKLY_CONFIG: cannot read {path}: {exc}") from exc
    section = data.get("frankly", data)
    return {
        key: value for key, value in section.items() if f"FRANKLY_{key.upper()}" not in os.environ
    }


def load_settings() -> Settings:
    """Build settings or raise SettingsError with one line naming the bad setting."""
    try:
        return Settings(**_toml_values())
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:
            raise SettingsError(message) from None
        name = "FRANKLY_" + str(first["loc"][0]).upper()
        raise SettingsError(f"{name}: {message} (got {first.get('input')!r})") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
