"""Secrets at rest: device secrets and secret keys encrypted, app secrets hashed.

Devices sign their MQTT password with HMAC keyed by the clock hour over their secret
(spec: device-mqtt §1.2), and AK/SK requests are HMAC-signed with the SK (spec: iotda-v5 §2),
so the server must recover those secrets: they are encrypted with AES-256-GCM under a key
kept outside the database. App secrets (legacy login) are only ever compared, so they are
stored as salted hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fleetbatch.domain.errors import FleetbatchError

KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_CHECK_LABEL = b"fleetbatch key check v1"


class VaultKeyError(FleetbatchError):
    """The secret key is missing, malformed, or not the one the database was written with."""


class SecretVault:
    """Encrypts and decrypts short secrets with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise VaultKeyError(f"the secret key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self._check = hmac.new(key, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()

    @property
    def key_check(self) -> str:
        """A value derived from the key, stored once, so a wrong key is caught at startup."""
        return self._check

    def encrypt(self, plaintext: str) -> bytes:
        """Nonce followed by the ciphertext and tag."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), None)

    def decrypt(self, blob: bytes) -> str:
        """The plaintext of `encrypt`'s output; raises VaultKeyError when it does not verify."""
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise VaultKeyError("a stored secret is truncated")
        try:
            return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], None).decode()
        except InvalidTag as exc:
            raise VaultKeyError("a stored secret does not decrypt with this key") from exc


def decode_key(text: str) -> bytes:
    """A key given as base64 text (settings or key file)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise VaultKeyError("the secret key is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise VaultKeyError(f"the secret key must be base64 of {KEY_BYTES} bytes")
    return key


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, creating it (mode 0600) with a fresh random key when absent."""
    try:
        if path.exists():
            return decode_key(path.read_text())
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = base64.b64encode(os.urandom(KEY_BYTES)).decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # another process created it between our check and open: use theirs
            return decode_key(path.read_text())
        with os.fdopen(fd, "w") as handle:
            handle.write(encoded + "\n")
    except OSError as exc:
        raise VaultKeyError(f"cannot read or create the secret key file {path}: {exc}") from exc
    return decode_key(encoded)


def hash_secret(secret: str) -> str:
    """A salted hash of a high-entropy secret: `salt$hex(sha256(salt + secret))`."""
    salt = os.urandom(16).hex()
    return f"{salt}${hashlib.sha256((salt + secret).encode()).hexdigest()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of `secret` against `hash_secret`'s output."""
    salt, _, digest = stored.partition("$")
    candidate = hashlib.sha256((salt + secret).encode()).hexdigest()
    return hmac.compare_digest(candidate, digest)


def hash_token(token: str) -> str:
    """An unsalted SHA-256 of a random token, for lookup by token (access tokens)."""
    return hashlib.sha256(token.encode()).hexdigest()
