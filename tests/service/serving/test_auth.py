"""Signed user tokens: round trip, forgery, malformed and expired tokens, the opt-out flag."""

import base64
import json

import pytest

from service.serving.auth import TokenError, User, create_token, new_user_id, verify_token

SECRET = "s3cret"
NOW = 1_700_000_000.0


def test_round_trip():
    token = create_token(SECRET, "u_abc", ttl_s=3600, now=NOW)
    assert token.startswith("v1.") and token.count(".") == 2
    user = verify_token(SECRET, token, now=NOW + 10)
    assert user == User("u_abc", NOW + 3600, False)


def test_opt_out_flag_survives():
    token = create_token(SECRET, "u_x", ttl_s=60, opt_out=True, now=NOW)
    assert verify_token(SECRET, token, now=NOW).opt_out is True
    plain = create_token(SECRET, "u_x", ttl_s=60, now=NOW)
    assert verify_token(SECRET, plain, now=NOW).opt_out is False


def test_other_secret_is_rejected():
    token = create_token(SECRET, "u_abc", ttl_s=3600, now=NOW)
    with pytest.raises(TokenError, match="signature is invalid") as info:
        verify_token("another", token, now=NOW)
    assert "get a new one" in str(info.value)


def test_forged_payload_is_rejected():
    token = create_token(SECRET, "u_abc", ttl_s=3600, now=NOW)
    _, _, sig = token.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps({"u": "u_admin", "exp": NOW + 10**9}).encode())
    forged = f"v1.{forged_body.rstrip(b'=').decode()}.{sig}"
    with pytest.raises(TokenError, match="forged"):
        verify_token(SECRET, forged, now=NOW)


def test_tampered_signature_is_rejected():
    token = create_token(SECRET, "u_abc", ttl_s=3600, now=NOW)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(TokenError, match="signature"):
        verify_token(SECRET, flipped, now=NOW)


@pytest.mark.parametrize("token", ["garbage", "v1.onlytwo", "v2.a.b", "v1.a.b.c", "."])
def test_malformed_token(token):
    with pytest.raises(TokenError, match="malformed") as info:
        verify_token(SECRET, token, now=NOW)
    assert "POST /api/session" in str(info.value)


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_says_send_hello(token):
    with pytest.raises(TokenError, match="hello"):
        verify_token(SECRET, token)


def test_non_ascii_token_is_a_token_error():
    with pytest.raises(TokenError):
        verify_token(SECRET, "v1.abc.\u00e9t\u00e9", now=NOW)


def test_expired_token():
    token = create_token(SECRET, "u_abc", ttl_s=100, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 100).user_id == "u_abc"  # last valid second
    with pytest.raises(TokenError, match="expired") as info:
        verify_token(SECRET, token, now=NOW + 101)
    assert "get a new one" in str(info.value)


def test_unreadable_payload_with_valid_signature():
    import hashlib
    import hmac
    body = base64.urlsafe_b64encode(b'{"no_user": 1}').rstrip(b"=").decode()
    sig = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest())
    token = f"v1.{body}.{sig.rstrip(b'=').decode()}"
    with pytest.raises(TokenError, match="unreadable"):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize("user_id", ["", "u" * 129])
def test_create_token_checks_user_id(user_id):
    with pytest.raises(ValueError, match="user id"):
        create_token(SECRET, user_id, ttl_s=60)


def test_new_user_ids_are_unique_and_prefixed():
    ids = {new_user_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("u_") and len(i) == 18 for i in ids)
