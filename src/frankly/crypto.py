"""Secrets at rest: AES-GCM with a key derived from FRANKLY_SECRET_KEY.

Channel passwords, API secrets and the LLM key are stored as `v1:<base64(nonce|ciphertext)>`.
A canary row proves at start-up that the configured key is the one the secrets were written
with; a wrong key is a clear error, never garbage.
"""

from __future__ import annotations

import base64
import json
import os
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from frankly.config import get_settings

PREFIX = "v1:"
_CANARY = "frankly-secret-check"


class WrongSecretKey(Exception):
    """The stored secrets were encrypted with another FRANKLY_SECRET_KEY (or were tampered with)."""


class SecretBox:
    def __init__(self, secret: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"frankly", info=b"secrets-at-rest v1"
        ).derive(secret.encode())
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str, *, purpose: str = "") -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, *, purpose: str = "") -> str:
        if not token.startswith(PREFIX):
            raise WrongSecretKey("not an encrypted Frankly secret")
        try:
            raw = base64.urlsafe_b64decode(token[len(PREFIX) :].encode())
            return self._aead.decrypt(raw[:12], raw[12:], purpose.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise WrongSecretKey(
                "stored secrets cannot be decrypted with this FRANKLY_SECRET_KEY; "
                "set the key they were written with"
            ) from exc

    def encrypt_json(self, value: dict[str, Any], *, purpose: str = "") -> str:
        return self.encrypt(json.dumps(value, sort_keys=True), purpose=purpose)

    def decrypt_json(self, token: str, *, purpose: str = "") -> dict[str, Any]:
        value = json.loads(self.decrypt(token, purpose=purpose))
        if not isinstance(value, dict):
            raise WrongSecretKey("stored secret is not an object")
        return value

    def canary(self) -> str:
        return self.encrypt(_CANARY, purpose="canary")

    def check_canary(self, token: str) -> None:
        if self.decrypt(token, purpose="canary") != _CANARY:
            raise WrongSecretKey("the secret-key check value does not match")


@lru_cache(maxsize=4)
def _box_for(secret: str) -> SecretBox:
    return SecretBox(secret)


def box() -> SecretBox:
    return _box_for(get_settings().effective_secret())


def mask(value: str | None) -> str:
    """What the browser may see of a secret: whether it is set, never the value."""
    return "set" if value else "not set"
