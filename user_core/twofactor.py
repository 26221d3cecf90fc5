"""TOTP (RFC 6238, via pyotp) and recovery codes for two-factor login. Pure: no I/O.

Codes of the previous, current and next 30-second step are accepted (clock drift); the step a
code belongs to is returned so the caller can refuse it once used (``Store.use_totp_step``).
Recovery codes are 10 random base32 characters (50 bits); only their SHA-256 is stored, which
is enough for random codes (no dictionary to try, unlike passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pyotp

ISSUER = "shardchat"
RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no look-alikes (0/o, 1/l/i)


def new_secret() -> str:
    return pyotp.random_base32()


def otpauth_uri(secret: str, username: str) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app reads from a QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step (``floor(now / 30) + offset``) whose code equals ``code``, or None."""
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    for offset in (0, -1, 1):
        at = now + offset * totp.interval
        if hmac.compare_digest(totp.at(at), code):
            return int(at // totp.interval)
    return None


def new_recovery_codes() -> list[str]:
    def one() -> str:
        chars = "".join(secrets.choice(_ALPHABET) for _ in range(10))
        return f"{chars[:5]}-{chars[5:]}"

    return [one() for _ in range(RECOVERY_CODES)]


def looks_like_recovery_code(code: str) -> bool:
    return len(normalize_recovery_code(code)) == 10


def normalize_recovery_code(code: str) -> str:
    return code.strip().lower().replace("-", "").replace(" ", "")


def hash_recovery_code(code: str) -> bytes:
    return hashlib.sha256(normalize_recovery_code(code).encode()).digest()
