"""Known answers of the web client's scheme (graphql_edge/static/e2e.js, libsodium.js) against
tests/e2e_vectors.json, in real Chromium: the same bytes as the Python implementation for every
reproducible structure (keys from seeds, device list bodies, signatures and chain hashes, the
proposal, the sealed key statement, message AAD, ciphertext and signature, safety numbers), the
sealed box opened with the recipient's secret, every negative case with its status; and a room key
sealed in the page opens in Python. The page is the static folder served by a plain HTTP server
(e2e.js needs nothing else).
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardchat.e2e import scheme

pytestmark = pytest.mark.timeout(60)

STATIC = Path(__file__).parents[2] / "graphql_edge" / "static"
V: dict[str, Any] = json.loads((Path(__file__).parents[1] / "e2e_vectors.json").read_text())

# Runs in the page: every computation from the vectors' inputs; the test compares the outputs.
COMPUTE = (Path(__file__).parent / "e2e_known_answers.js").read_text()


@pytest.fixture
def static_url() -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(STATIC))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_web_scheme_reproduces_the_known_answers(static_url: str, browser: Any) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{static_url}/e2e.js")  # any page of the origin: e2e.js is imported by URL
    out = page.evaluate(COMPUTE, V)

    for name, d in V["devices"].items():
        assert out["keys"][name] == {
            "signing_key_hex": d["signing_key_hex"],
            "encryption_key_hex": d["encryption_key_hex"],
            "device_id_b64": d["device_id_b64"],
        }
    for got, want in zip(out["chain"], V["device_list"]["entries"], strict=True):
        assert got == {k: want[k] for k in got}, want["name"]
    assert "not in the previous version" in out["bad_list"]
    assert "expected 2" in out["gap"]
    assert "another user" in out["other_user"]

    assert out["proposal_device"] == V["devices"]["alice2"]["device_id_hex"]
    assert out["proposal_signature"] == V["proposal"]["signature_hex"]

    rk = V["room_key"]
    assert out["opened"] == rk["key_hex"]
    assert out["opened_by_another"] is None
    assert out["statement_hex"] == rk["statement_hex"]
    assert out["statement_signature"] == rk["signature_hex"]
    assert out["statement_verifies"] is True
    # a key sealed in the page opens in Python (sealed boxes are random: only opening is a KAT)
    bob_secret = bytes.fromhex(V["devices"]["bob1"]["encryption_secret_hex"]["1"])
    opened = scheme.open_room_key(bytes.fromhex(out["sealed_in_page"]), bob_secret)
    assert opened is not None and opened.hex() == rk["key_hex"]

    for got, want in zip(out["messages"], V["messages"], strict=True):
        assert got["aad_hex"] == want["aad_hex"]
        assert got["plaintext_hex"] == want["plaintext_hex"]
        assert got["ciphertext_hex"] == want["ciphertext_hex"]
        assert got["signature_hex"] == want["signature_hex"]
        assert got["wire_ciphertext"] == want["wire"]["ciphertext"]
        assert got["opened"] == {"status": "ok", "text": want["text"]}
    assert out["no_key"] == "no_key"
    assert [n["status"] for n in out["negative"]] == [c["expect"] for c in V["negative_messages"]]
    assert all(n["text"] is None for n in out["negative"])

    assert out["safety"] == {k: V["safety"][k] for k in out["safety"]}
    # padding, non-canonical trailing bits and the other alphabet are refused; canonical passes
    assert out["base64"] == [None, None, None, V["devices"]["alice1"]["device_id_hex"]]
    assert errors == []
