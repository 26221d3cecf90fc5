"""Known-answer vectors of the scheme (docs/e2e.md section 10): ``tests/e2e_vectors.json``.

Everything is derived from fixed seeds, so every field is reproducible except the sealed box
(``crypto_box_seal`` draws a fresh ephemeral key): ``build(sealed=...)`` reuses the stored one.
A browser implementation is checked by reproducing every ``*_hex`` field from the seeds and by
opening the sealed box. Regenerate only when the scheme changes (with a new version tag):

    python -m shardchat.e2e.vectors > tests/e2e_vectors.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from shardchat.e2e import scheme

ALICE, BOB = 1_000_000_000_000_001, 1_000_000_000_000_002
ROOM, MESSAGE = 2_000_000_000_000_003, 3_000_000_000_000_004
T = 1_767_225_600_000  # issued_at/created_at of every structure


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"shardchat e2e vectors: {label}".encode()).digest()


def _device(name: str, versions: int = 1) -> scheme.DeviceSecrets:
    return scheme.DeviceSecrets(
        _seed(f"{name} device id")[:16],
        _seed(f"{name} signing"),
        {v: _seed(f"{name} encryption {v}") for v in range(1, versions + 1)},
    )


def _public(d: scheme.DeviceSecrets, version: int | None = None) -> scheme.Device:
    v = version or d.key_version
    return scheme.Device(d.device_id, d.signing_key, d.encryption_key(v), v)


def _device_json(user_id: int, d: scheme.DeviceSecrets) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id_hex": d.device_id.hex(),
        "device_id_b64": scheme.b64e(d.device_id),
        "signing_seed_hex": d.signing_seed.hex(),
        "signing_key_hex": d.signing_key.hex(),
        "encryption_secret_hex": {str(v): s.hex() for v, s in d.encryption_secrets.items()},
        "encryption_key_hex": {str(v): d.encryption_key(v).hex() for v in d.encryption_secrets},
    }


def _entry_json(
    name: str, e: scheme.SignedDeviceList, state: scheme.VerifiedChain
) -> dict[str, Any]:
    return {
        "name": name,
        "body_hex": e.body.hex(),
        "signature_hex": e.signature.hex(),
        "hash_hex": e.hash.hex(),
        "body_b64": scheme.b64e(e.body),
        "signature_b64": scheme.b64e(e.signature),
        "anchor_hex": state.anchor.hex(),
        "devices_hex": [d.device_id.hex() for d in state.head.devices],
    }


def _chain(
    a1: scheme.DeviceSecrets, a2: scheme.DeviceSecrets, a3: scheme.DeviceSecrets
) -> tuple[list[dict[str, Any]], list[scheme.SignedDeviceList]]:
    steps: list[tuple[str, scheme.DeviceSecrets, bool, tuple[scheme.Device, ...]]] = [
        ("genesis: alice1 alone, self-signed", a1, True, (_public(a1),)),
        ("add: alice1 approves alice2", a1, False, (_public(a1), _public(a2, 1))),
        ("rotate: alice2 lists its key_version 2", a2, False, (_public(a1), _public(a2, 2))),
        ("remove: alice2 drops alice1", a2, False, (_public(a2, 2),)),
        ("reset: alice3 starts again alone", a3, True, (_public(a3),)),
    ]
    out, entries = [], []
    state: scheme.VerifiedChain | None = None
    for version, (name, signer, reset, devices) in enumerate(steps, start=1):
        dl = scheme.DeviceList(
            ALICE,
            version,
            bytes(32) if state is None else state.head_hash,
            reset,
            signer.device_id,
            T,
            tuple(sorted(devices)),
        )
        entry = scheme.sign_device_list(dl, signer)
        state = scheme.check_next(entry, ALICE, state)
        entries.append(entry)
        out.append(_entry_json(name, entry, state))
    return out, entries


def _message(
    kind: str, ctx: scheme.MessageContext, text: str, key: bytes, signer: scheme.DeviceSecrets
) -> tuple[dict[str, Any], scheme.Envelope]:
    nonce = _seed(f"{kind} aead nonce")[:24]
    plaintext = scheme.encode_plaintext(text)
    env = scheme.encrypt_message(ctx, plaintext, key, signer, nonce)
    return {
        "kind": kind,
        "room_id": ctx.room_id,
        "epoch": ctx.epoch,
        "author_id": ctx.author_id,
        "sender_device_hex": ctx.sender_device.hex(),
        "ref_hex": ctx.ref.hex(),
        "text": text,
        "plaintext_hex": plaintext.hex(),
        "aad_hex": ctx.aad().hex(),
        "nonce_hex": nonce.hex(),
        "ciphertext_hex": env.ciphertext.hex(),
        "signature_hex": env.signature.hex(),
        "wire": env.wire(),
        "expect": "ok",
    }, env


def _negative(
    name: str, base: dict[str, Any], env: scheme.Envelope, expect: scheme.Status
) -> dict[str, Any]:
    """A create message whose ``wire`` was altered; a receiver rebuilds the associated data
    from the wire's ``sender_device`` and the base's room, epoch, author and send nonce."""
    keep = ("kind", "room_id", "epoch", "author_id", "ref_hex")
    return {k: base[k] for k in keep} | {"name": name, "wire": env.wire(), "expect": expect}


def build(sealed: bytes | None = None) -> dict[str, Any]:
    """The vectors; ``sealed``: the sealed box to reuse (a new random one when None)."""
    a1, a2, a3, b1 = _device("alice1"), _device("alice2", 2), _device("alice3"), _device("bob1")
    chain_json, entries = _chain(a1, a2, a3)

    room_key = _seed("room key epoch 1")
    sealed = sealed if sealed is not None else scheme.seal_room_key(room_key, b1.encryption_key())
    statement = scheme.KeyStatement(ROOM, 1, BOB, b1.device_id, 1, ALICE, a1.device_id, sealed)
    proposal = scheme.encode_proposal(ALICE, _public(a2, 1), T)

    create_ctx = scheme.MessageContext.create(ROOM, 1, ALICE, a1.device_id, "n-0001")
    create, env = _message("create", create_ctx, "Hello, Bob! 🔐", room_key, a1)
    edit_ctx = scheme.MessageContext.edit(ROOM, 1, ALICE, a1.device_id, MESSAGE)
    edit, _ = _message("edit", edit_ctx, "Hello again, Bob.", room_key, a1)

    flipped = bytearray(env.ciphertext)
    flipped[0] ^= 1
    forged_ct = bytes(flipped)
    forged_sig = scheme.sign(a1.signing_seed, create_ctx.aad() + env.nonce + forged_ct)
    stranger = _device("mallory")
    stranger_ctx = scheme.MessageContext.create(ROOM, 1, ALICE, stranger.device_id, "n-0001")
    stranger_sig = scheme.sign(
        stranger.signing_seed, stranger_ctx.aad() + env.nonce + env.ciphertext
    )
    negatives = [
        _negative(
            "ciphertext byte flipped (signature no longer verifies)",
            create,
            scheme.Envelope(forged_ct, env.nonce, 1, env.sender_device, env.signature),
            "bad_signature",
        ),
        _negative(
            "ciphertext byte flipped and re-signed by the author's device (AEAD fails)",
            create,
            scheme.Envelope(forged_ct, env.nonce, 1, env.sender_device, forged_sig),
            "tampered",
        ),
        _negative(
            "signature by another device claiming alice1",
            create,
            scheme.Envelope(
                env.ciphertext,
                env.nonce,
                1,
                env.sender_device,
                scheme.sign(stranger.signing_seed, create_ctx.aad() + env.nonce + env.ciphertext),
            ),
            "bad_signature",
        ),
        _negative(
            "sender_device not in the author's device list",
            create,
            scheme.Envelope(env.ciphertext, env.nonce, 1, stranger.device_id, stranger_sig),
            "unknown_device",
        ),
    ]
    bad_chain = scheme.sign_device_list(
        scheme.DeviceList(
            ALICE, 2, entries[0].hash, False, stranger.device_id, T,
            tuple(sorted([_public(a1), _public(stranger)])),
        ),
        stranger,
    )  # fmt: skip
    return {
        "scheme": "shardchat/e2e/v1 (docs/e2e.md)",
        "about": (
            "Every *_hex field is reproducible from the seeds except room_key.sealed_hex "
            "(crypto_box_seal uses a random ephemeral key): open it with bob1's secret. "
            "*_b64 and wire fields are base64url without padding."
        ),
        "users": {"alice": ALICE, "bob": BOB},
        "devices": {
            "alice1": _device_json(ALICE, a1),
            "alice2": _device_json(ALICE, a2),
            "alice3": _device_json(ALICE, a3),
            "bob1": _device_json(BOB, b1),
            "mallory": _device_json(ALICE, stranger),
        },
        "device_list": {"user_id": ALICE, "issued_at_ms": T, "entries": chain_json},
        "bad_device_list": {
            "about": "version 2 on top of entries[0], signed by a device not in version 1",
            "body_hex": bad_chain.body.hex(),
            "signature_hex": bad_chain.signature.hex(),
            "expect": "invalid",
        },
        "proposal": {
            "about": "alice2 asks to join alice's list (key_version 1)",
            "body_hex": proposal.hex(),
            "signature_hex": scheme.sign(a2.signing_seed, proposal).hex(),
        },
        "room_key": {
            "room_id": ROOM,
            "epoch": 1,
            "key_hex": room_key.hex(),
            "recipient": "bob1",
            "sender": "alice1",
            "sealed_hex": sealed.hex(),
            "statement_hex": statement.encode().hex(),
            "signature_hex": scheme.sign(a1.signing_seed, statement.encode()).hex(),
        },
        "messages": [create, edit],
        "message_id_of_edit": MESSAGE,
        "negative_messages": negatives,
        "safety": {
            "alice_anchor": "alice1 (the anchor before the reset)",
            "bob_anchor": "bob1",
            "alice_digits": scheme.fingerprint(a1.signing_key, ALICE),
            "bob_digits": scheme.fingerprint(b1.signing_key, BOB),
            "safety_number": scheme.safety_number(ALICE, a1.signing_key, BOB, b1.signing_key),
            "after_reset": scheme.safety_number(ALICE, a3.signing_key, BOB, b1.signing_key),
            "alice2_device_fingerprint": scheme.fingerprint(a2.signing_key, ALICE),
        },
    }


def main() -> None:
    json.dump(build(), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
