"""Dashboard sessions: a login trades an API key holding the admin scope for a signed cookie.

The cookie (HttpOnly, SameSite=Strict, Path=/__microkit/) holds the key's id and an expiry, signed with
HMAC-SHA256 by a secret kept in the project's `.microkit/dashboard.key` (made once, mode 0600), so
every gateway worker of the host accepts it. Each request checks the signature, the expiry and that
the key is still active, so revoking the key ends its sessions (within the key cache's ttl).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

COOKIE = "mk_session"
LIFETIME = 12 * 3600


def _secret(root: Path) -> bytes:
    path = root / ".microkit" / "dashboard.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            data = path.read_bytes()
            if len(data) >= 32:
                return data
            time.sleep(0.01)  # another worker is writing it
        raise RuntimeError(f"{path} is too short to sign sessions: remove it")
    data = secrets.token_bytes(32)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return data


class Sessions:
    """Make and check session cookies (see the module docstring)."""

    def __init__(self, root: Path, lifetime: int = LIFETIME) -> None:
        self.key = _secret(root)
        self.lifetime = lifetime

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def make(self, key_id: str) -> str:
        payload = base64.urlsafe_b64encode(json.dumps({"k": key_id, "e": int(time.time()) + self.lifetime}).encode())
        return payload.decode().rstrip("=") + "." + self._sign(payload.rstrip(b"="))

    def key_id(self, cookie: str | None) -> str | None:
        """The key id of a valid, unexpired session cookie, else None."""
        if not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(self._sign(payload.encode()), signature):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key_id, expires = str(data["k"]), int(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        return key_id if expires > time.time() else None

    def header(self, value: str, secure: bool) -> str:
        """The Set-Cookie value for a new session."""
        return (f"{COOKIE}={value}; Path=/__microkit/; HttpOnly; SameSite=Strict; Max-Age={self.lifetime}"
                + ("; Secure" if secure else ""))


def cleared(secure: bool) -> str:
    return f"{COOKIE}=; Path=/__microkit/; HttpOnly; SameSite=Strict; Max-Age=0" + ("; Secure" if secure else "")
