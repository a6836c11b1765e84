"""Signed user tokens (HMAC-SHA256). Pure: no I/O.

Format: `v1.<base64url(json payload)>.<base64url(signature)>`; payload holds the
user id, expiry and the user's training opt-out flag.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass


class TokenError(ValueError):
    """The token is missing, malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class User:
    user_id: str
    expires_at: float
    opt_out: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_user_id() -> str:
    return "u_" + secrets.token_hex(8)


def create_token(secret: str, user_id: str, ttl_s: int, opt_out: bool = False, now: float | None = None) -> str:
    if not user_id or len(user_id) > 128:
        raise ValueError(f"user id must be 1..128 characters, got {user_id!r}")
    payload = {"u": user_id, "exp": int((time.time() if now is None else now) + ttl_s)}
    if opt_out:
        payload["opt"] = 1
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
    return f"v1.{body}.{sig}"


def verify_token(secret: str, token: str | None, now: float | None = None) -> User:
    if not token:
        raise TokenError("no token: send hello {token} first (get one from POST /api/session)")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        raise TokenError("malformed token: expected v1.<payload>.<signature>; get a new one from POST /api/session")
    want = _b64(hmac.new(secret.encode(), parts[1].encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want.encode(), parts[2].encode()):
        raise TokenError("token signature is invalid (forged, or signed with another secret); get a new one")
    try:
        payload = json.loads(_unb64(parts[1]))
        user = User(str(payload["u"]), float(payload["exp"]), bool(payload.get("opt")))
    except (ValueError, KeyError, TypeError):
        raise TokenError("token payload is unreadable; get a new one from POST /api/session") from None
    if user.expires_at < (time.time() if now is None else now):
        raise TokenError("token expired; get a new one from POST /api/session")
    return user
