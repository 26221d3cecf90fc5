"""Known-answer tests of the scheme against tests/e2e_vectors.json (docs/e2e.md section 10).

The file is what a browser implementation is checked against, so these tests check it two ways:
every reproducible field is rebuilt from the seeds and must match byte for byte, and the
answers are checked on their own (signatures verify, the sealed box opens, the messages
decrypt, the negative cases give the documented status, a broken chain is refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shardchat.e2e import scheme, vectors

V: dict[str, Any] = json.loads((Path(__file__).parents[1] / "e2e_vectors.json").read_text())
H = bytes.fromhex


def _device(name: str) -> scheme.Device:
    d = V["devices"][name]
    last = max(d["encryption_key_hex"], key=int)
    return scheme.Device(
        H(d["device_id_hex"]), H(d["signing_key_hex"]), H(d["encryption_key_hex"][last]), int(last)
    )


def test_every_reproducible_field_matches_the_file() -> None:
    assert vectors.build(sealed=H(V["room_key"]["sealed_hex"])) == V


def test_keys_derive_from_the_seeds() -> None:
    for d in V["devices"].values():
        assert scheme.signing_public(H(d["signing_seed_hex"])).hex() == d["signing_key_hex"]
        assert scheme.b64e(H(d["device_id_hex"])) == d["device_id_b64"]
        for version, secret in d["encryption_secret_hex"].items():
            secrets = {int(version): H(secret)}
            dev = scheme.DeviceSecrets(H(d["device_id_hex"]), H(d["signing_seed_hex"]), secrets)
            assert dev.encryption_key().hex() == d["encryption_key_hex"][version]


def test_the_device_list_chain_verifies_and_tracks_its_anchor() -> None:
    entries = [
        scheme.SignedDeviceList(H(e["body_hex"]), H(e["signature_hex"]))
        for e in V["device_list"]["entries"]
    ]
    state = None
    for entry, want in zip(entries, V["device_list"]["entries"], strict=True):
        assert scheme.b64d(want["body_b64"]) == entry.body
        state = scheme.check_next(entry, V["users"]["alice"], state)
        assert state.head_hash.hex() == want["hash_hex"]
        assert state.anchor.hex() == want["anchor_hex"]
        assert [d.device_id.hex() for d in state.head.devices] == want["devices_hex"]
    # the reset (version 5) moved the anchor from alice1 to alice3
    assert V["device_list"]["entries"][4]["anchor_hex"] == V["devices"]["alice3"]["signing_key_hex"]
    # a layout detail a port gets wrong first: the body starts with the tag, then user id u64
    body = entries[0].body
    assert body.startswith(b"shardchat/e2e/v1/device-list\x00")
    assert int.from_bytes(body[29:37], "big") == V["users"]["alice"]


def test_broken_chains_are_refused() -> None:
    first = V["device_list"]["entries"][0]
    genesis = scheme.SignedDeviceList(H(first["body_hex"]), H(first["signature_hex"]))
    state = scheme.check_next(genesis, V["users"]["alice"], None)
    bad = V["bad_device_list"]
    with pytest.raises(scheme.SchemeError, match="not in the previous version"):
        scheme.check_next(
            scheme.SignedDeviceList(H(bad["body_hex"]), H(bad["signature_hex"])),
            V["users"]["alice"],
            state,
        )
    entries = [
        scheme.SignedDeviceList(H(e["body_hex"]), H(e["signature_hex"]))
        for e in V["device_list"]["entries"]
    ]
    with pytest.raises(scheme.SchemeError, match="expected 2"):  # one version left out
        scheme.verify_chain([entries[0], entries[2]], V["users"]["alice"])
    with pytest.raises(scheme.SchemeError, match="another user"):
        scheme.verify_chain(entries[:1], V["users"]["bob"])
    flipped = bytearray(entries[0].signature)
    flipped[5] ^= 1
    with pytest.raises(scheme.SchemeError, match="signature"):
        scheme.verify_chain(
            [scheme.SignedDeviceList(entries[0].body, bytes(flipped))], 0 + V["users"]["alice"]
        )


def test_the_proposal_proves_possession() -> None:
    p = V["proposal"]
    device = scheme.check_proposal(H(p["body_hex"]), H(p["signature_hex"]), V["users"]["alice"])
    assert device.device_id.hex() == V["devices"]["alice2"]["device_id_hex"]


def test_the_sealed_room_key_opens_and_its_statement_verifies() -> None:
    rk = V["room_key"]
    bob = V["devices"]["bob1"]
    key = scheme.open_room_key(H(rk["sealed_hex"]), H(bob["encryption_secret_hex"]["1"]))
    assert key is not None and key.hex() == rk["key_hex"]
    alice = V["devices"]["alice1"]
    assert scheme.verify(
        H(alice["signing_key_hex"]), H(rk["statement_hex"]), H(rk["signature_hex"])
    )
    # someone else's secret opens nothing
    assert scheme.open_room_key(H(rk["sealed_hex"]), H(alice["encryption_secret_hex"]["1"])) is None


def _context(m: dict[str, Any], sender: bytes) -> scheme.MessageContext:
    return scheme.MessageContext(
        m["room_id"],
        m["epoch"],
        m["author_id"],
        sender,
        scheme.KIND_CREATE if m["kind"] == "create" else scheme.KIND_EDIT,
        H(m["ref_hex"]),
    )


@pytest.mark.parametrize("index", [0, 1], ids=["create", "edit"])
def test_messages_decrypt_to_their_text(index: int) -> None:
    m = V["messages"][index]
    env = scheme.envelope_from_wire(m["wire"], 8192)
    ctx = _context(m, env.sender_device)
    assert ctx.aad().hex() == m["aad_hex"]
    status, text = scheme.open_message(ctx, env, _device("alice1"), H(V["room_key"]["key_hex"]))
    assert (status, text) == ("ok", m["text"])
    if m["kind"] == "edit":
        assert H(m["ref_hex"]) == V["message_id_of_edit"].to_bytes(8, "big")


@pytest.mark.parametrize("case", V["negative_messages"], ids=lambda c: c["expect"])
def test_negative_messages_give_their_status(case: dict[str, Any]) -> None:
    env = scheme.envelope_from_wire(case["wire"], 8192)
    known = {d.device_id: d for d in (_device("alice1"),)}
    status, text = scheme.open_message(
        _context(case, env.sender_device),
        env,
        known.get(env.sender_device),
        H(V["room_key"]["key_hex"]),
    )
    assert (status, text) == (case["expect"], None)


def test_no_key_is_reported_before_any_decryption() -> None:
    m = V["messages"][0]
    env = scheme.envelope_from_wire(m["wire"], 8192)
    assert scheme.open_message(_context(m, env.sender_device), env, _device("alice1"), None) == (
        "no_key",
        None,
    )


def test_safety_numbers_and_fingerprints() -> None:
    s = V["safety"]
    alice, bob = V["users"]["alice"], V["users"]["bob"]
    a1 = H(V["devices"]["alice1"]["signing_key_hex"])
    b1 = H(V["devices"]["bob1"]["signing_key_hex"])
    assert s["safety_number"] == s["alice_digits"] + s["bob_digits"]
    assert scheme.safety_number(bob, b1, alice, a1) == s["safety_number"]  # same for both
    assert len(s["safety_number"]) == 60 and s["safety_number"].isdigit()
    assert s["after_reset"] != s["safety_number"]
    assert s["after_reset"].endswith(s["bob_digits"])


def test_wire_encoding_is_strict_base64url() -> None:
    assert scheme.b64e(b"\xfb\xff") == "-_8"
    for bad in ("-_8=", "+/8", "-_9", "a b"):
        with pytest.raises(scheme.SchemeError):
            scheme.b64d(bad)
    with pytest.raises(scheme.SchemeError, match="16 bytes"):
        scheme.b64d(scheme.b64e(bytes(15)), 16)
    wire = dict(V["messages"][0]["wire"])
    for field, value in [("epoch", 0), ("epoch", True), ("nonce", scheme.b64e(bytes(23)))]:
        with pytest.raises(scheme.SchemeError):
            scheme.envelope_from_wire(dict(wire, **{field: value}), 8192)
    with pytest.raises(scheme.SchemeError, match="ciphertext must be"):
        scheme.envelope_from_wire(wire, 20)
