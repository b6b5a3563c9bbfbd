"""API keys: configured as sha256 hashes, sent as `Authorization: Bearer <key>`, compared in constant time.

An entry is `name:sha256hex` or `name:sha256hex:admin`, comma-separated in VGS_API_KEYS or one per line
in VGS_API_KEYS_FILE (`#` starts a comment). The name owns the jobs its key submits; an admin key sees
every job. Keys themselves are never stored or logged, only their hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from jobs.settings import ServiceSettings

from .errors import ApiError

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False


ANONYMOUS = Principal("anonymous", admin=True)  # auth off: one user who sees everything


@dataclass(frozen=True)
class KeyEntry:
    name: str
    digest: bytes
    admin: bool


def hash_key(key: str) -> str:
    """The sha256 hex of an API key: what the configuration holds."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_entries(text: str, where: str) -> list[KeyEntry]:
    entries = []
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not HEX64.match(parts[1].lower()) \
                or (len(parts) == 3 and parts[2] != "admin"):
            raise ValueError(f"{where}: entry {number} is not name:sha256hex[:admin] (the hash of a key is "
                             "64 hex digits: videogpt-serve hash-key KEY prints it)")
        entries.append(KeyEntry(parts[0], bytes.fromhex(parts[1].lower()), len(parts) == 3))
    return entries


class KeyRing:
    """The configured keys; `authenticate` turns an Authorization header into a Principal or a 401."""

    def __init__(self, settings: ServiceSettings):
        self.enabled = settings.auth
        entries = parse_entries(settings.api_keys, "VGS_API_KEYS")
        if settings.api_keys_file:
            path = Path(settings.api_keys_file)
            if not path.is_file():
                raise ValueError(f"VGS_API_KEYS_FILE {path}: no such file")
            entries += parse_entries(path.read_text(), str(path))
        if self.enabled and not entries:
            raise ValueError("VGS_AUTH is on but no API key is configured (VGS_API_KEYS or VGS_API_KEYS_FILE)")
        self.entries = entries

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("send an API key: Authorization: Bearer <key>")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for entry in self.entries:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            raise _unauthorized("the API key is not valid")
        return Principal(found.name, found.admin)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def can_see(principal: Principal, record: dict) -> bool:
    return principal.admin or record.get("owner") == principal.name
