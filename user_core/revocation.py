"""Access-token revocation: what is revoked, and the message that ends live connections.

Two kinds of subject, both kept in the Registry for ``access_token_ttl_s`` (after that every
token they could refuse has expired anyway):
- ``s:<family id>``: every access token of one login (logout, ``revokeSession``, a reused
  refresh token revoking its family);
- ``u:<user id>``: every access token of the user issued before a time (password change).

A token is refused when a subject of it holds a "not before" later than the token's ``ims``.
After each revocation a :class:`Revocation` is published on :data:`CHANNEL`; every edge and
gateway closes the live connections it matches (graphql-ws 4403, gateway 4501).
"""

from __future__ import annotations

import msgspec

from user_core.tokens import Principal

CHANNEL = "auth:revocations"


class Revocation(msgspec.Struct, frozen=True):
    user_id: int
    session_ids: list[str]  # the families revoked
    not_before_ms: int  # every token of the user issued before this, if ``everything``
    everything: bool = False

    def covers(self, principal: Principal) -> bool:
        if principal.user_id != self.user_id:
            return False
        if self.everything and principal.issued_ms < self.not_before_ms:
            return True
        return principal.session_id in self.session_ids


def subjects(principal: Principal) -> list[str]:
    return [f"u:{principal.user_id}", f"s:{principal.session_id}"]


def revoked_subjects(rev: Revocation) -> list[str]:
    out = [f"s:{sid}" for sid in rev.session_ids]
    if rev.everything:
        out.append(f"u:{rev.user_id}")
    return out


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Revocation)


def encode(rev: Revocation) -> bytes:
    return _encoder.encode(rev)


def decode(payload: bytes) -> Revocation | None:
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
