"""An end-to-end encrypted conversation between the web client (real Chromium, e2e.js) and the
Python client (``shardchat.e2e.E2EClient``) through ``shardchat dev`` (docs/e2e.md).

alice registers in the page (her browser's device keys are made and her device list published),
creates a room with the "encrypted" box ticked (a lock shows), invites bob, a Python client; bob
accepts (a rotation is due). alice sends: her page rotates the room key (sealed to bob's device)
and encrypts; bob's client decrypts the same text. bob sends: the page shows his text, its
signature checked against his device list. Both edit. A message whose signature bob's client
forged shows "could not verify", never its text. The safety number in the page equals the one
bob's client computes. After a reload the history decrypts with the keys kept in IndexedDB.
alice's next device, a Python client, is approved from her page and reads what is sent after
(the page rotates the key for it), not what was sent before. alice clears the site's data: her
page is a new device, pending until she resets her list to it; bob's client reports her changed
safety number, and the dropped device reads nothing sent after. The
server's copy (GraphQL and every byte of the SQLite files) holds no plaintext, while the room's
name (metadata, not protected) is found there: the scan works.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shardchat.client import EdgeClient
from shardchat.e2e import scheme
from shardchat.e2e.client import Decrypted, E2EClient
from tests.browser.dev_process import run_dev
from tests.browser.web_ui import invite, send, sign_up, wait_texts

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
# docs/img/web-e2e.png and web-e2e-safety.png are copies of these
SCREENSHOT = Path("/tmp/shardchat-e2e.png")
SAFETY_SCREENSHOT = Path("/tmp/shardchat-e2e-safety.png")
ROOM = "secret plans"
FROM_WEB = "the eagle lands at dawn 🦅"
FROM_WEB_EDITED = "the eagle lands at noon"
FROM_PY = "roger that, from python"
FROM_PY_EDITED = "roger that, from python (edited)"
FORGED = "transfer the funds now"
AFTER_APPROVAL = "welcome, my other device"
AFTER_RESET = "starting over in this browser"
DELETE_KEYS = """() => new Promise((ok, fail) => {
  const req = indexedDB.deleteDatabase("shardchat-e2e");
  req.onsuccess = ok; req.onerror = () => fail(req.error);
})"""


class LoopThread:
    """The Python client's own event loop (Playwright's sync API holds the main thread's)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], within_s: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(within_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def py_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.close()


def _until(check: Callable[[], T | None], what: str, within_s: float = 20) -> T:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {within_s}s")


def _bob_reads(loop: LoopThread, bob: E2EClient, room: int, text: str) -> Decrypted:
    def check() -> Decrypted | None:
        history = loop.run(bob.history(room))
        return next((m for m in history if m.text == text), None)

    return _until(check, f"{text!r} in bob's history")


def test_web_and_python_clients_share_an_encrypted_room(
    tmp_path: Path, browser: Any, py_loop: LoopThread
) -> None:
    with run_dev(tmp_path) as dev:
        edge = EdgeClient(dev.edge_url)
        py_loop.run(edge.register("bob", "bob correct horse"))
        bob = E2EClient(edge, tmp_path / "bob-keys")
        assert py_loop.run(bob.setup()) == "active"

        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        sign_up(page, dev.edge_url, "alice")
        page.wait_for_selector("html[data-e2e=active]", timeout=15_000)  # device list published
        alice_id = str(page.evaluate("() => JSON.parse(localStorage['shardchat.session']).user.id"))

        page.fill("#create-room input[name=name]", ROOM)
        page.check("#create-room input[name=encrypted]")
        page.click("#create-room button")
        page.wait_for_selector("#composer", state="visible")
        room_id = re.sub(r"\D", "", page.locator("#room-id").inner_text())
        assert page.locator("#room-e2e .lock").is_visible()
        assert page.locator("#rooms button.room.active .lock").count() == 1

        invite(page, "bob")
        py_loop.run(edge.accept_invitation(int(room_id)))  # MEMBER_JOIN: a rotation is due

        # web -> python: the page rotates to a key sealed to bob's device too, then encrypts
        send(page, FROM_WEB)
        wait_texts(page, [FROM_WEB])
        got = _bob_reads(py_loop, bob, int(room_id), FROM_WEB)
        assert (got.status, got.author_id) == ("ok", int(alice_id))

        # python -> web: the page opens bob's text, checking his device's signature
        sent = py_loop.run(bob.send(int(room_id), FROM_PY))
        wait_texts(page, [FROM_WEB, FROM_PY])

        # edits both ways (the page's inline edit box, from the message's "⋯" menu)
        mine = page.locator("#messages .msg", has_text=FROM_WEB)
        mine.get_by_role("button", name="Actions for the message from alice").click()
        mine.get_by_role("button", name="Edit message").click()
        page.locator("#messages form.edit").get_by_label("Edit message").fill(FROM_WEB_EDITED)
        page.keyboard.press("Enter")
        wait_texts(page, [FROM_WEB_EDITED, FROM_PY])
        assert _bob_reads(py_loop, bob, int(room_id), FROM_WEB_EDITED).status == "ok"
        py_loop.run(bob.edit(int(room_id), int(sent["id"]), FROM_PY_EDITED))
        wait_texts(page, [FROM_WEB_EDITED, FROM_PY_EDITED])

        # a forged signature (the server does not check signatures: the readers do)
        nonce = secrets.token_hex(8)
        wire = py_loop.run(bob.encrypt(int(room_id), FORGED, nonce))
        sig = bytearray(scheme.b64d(str(wire["signature"])))
        sig[0] ^= 1
        forged = scheme.wire_to_graphql({**wire, "signature": scheme.b64e(bytes(sig))})
        q = (
            "mutation($r: ID!, $n: String!, $e: EncryptedPayloadInput) "
            "{ sendMessage(roomId: $r, nonce: $n, encrypted: $e) { id } }"
        )
        py_loop.run(edge.graphql(q, {"r": room_id, "n": nonce, "e": forged}))
        page.wait_for_selector("#messages .text.e2e-warning:has-text('could not verify')")
        texts = wait_texts(page, [FROM_WEB_EDITED, FROM_PY_EDITED])
        assert not any(FORGED in t for t in texts)
        assert py_loop.run(bob.history(int(room_id)))[-1].status == "bad_signature"
        page.mouse.move(700, 400)
        page.evaluate("() => document.querySelectorAll('#toasts .close').forEach((b) => b.click())")
        page.focus("#composer-input")
        page.screenshot(path=str(SCREENSHOT))

        # the safety number on demand equals bob's
        page.click("#safety")
        number = page.locator(f".e2e-safety dd[data-user='{bob.user_id}']")
        _until(lambda: re.fullmatch(r"(\d{5} ){11}\d{5}", number.inner_text()), "safety number")
        assert number.inner_text() == py_loop.run(bob.safety_number(int(alice_id)))
        page.screenshot(path=str(SAFETY_SCREENSHOT))
        page.click(".e2e-safety button:has-text('Close')")

        # reload: the device and the epoch keys come back from IndexedDB; history decrypts
        page.reload()
        page.wait_for_selector("html[data-e2e=active]", timeout=15_000)
        page.click("#rooms li")
        wait_texts(page, [FROM_WEB_EDITED, FROM_PY_EDITED])
        versions = py_loop.run(bob._chain_entries(int(alice_id)))
        assert len(versions) == 1  # the same device: no second genesis, no proposal

        # alice's next device (a Python client) asks to be added; her browser approves it after
        # comparing fingerprints; the next message rotates to a key it gets, older ones stay closed
        edge2 = EdgeClient(dev.edge_url)
        py_loop.run(edge2.login("alice", "alice correct horse"))
        alice2 = E2EClient(edge2, tmp_path / "alice2-keys")
        assert py_loop.run(alice2.setup()) == "pending"
        page.click("#safety")
        asking = page.locator(".e2e-safety dd", has_text="fingerprint")
        assert alice2.device_fingerprint() in asking.inner_text()
        asking.locator("button", has_text="Approve").click()
        page.wait_for_selector(".e2e-safety dd:has-text('approved')")
        page.click(".e2e-safety button:has-text('Close')")
        assert py_loop.run(alice2.activate()) == "active"
        send(page, AFTER_APPROVAL)
        wait_texts(page, [AFTER_APPROVAL])
        _until(lambda: py_loop.run(alice2.history(int(room_id))), "alice2's history")
        seen = [(m.status, m.text) for m in py_loop.run(alice2.history(int(room_id)))]
        # (the forged one fails its signature check before the key is looked for)
        want = [("no_key", None)] * 2 + [("bad_signature", None), ("ok", AFTER_APPROVAL)]
        assert seen == want
        assert _bob_reads(py_loop, bob, int(room_id), AFTER_APPROVAL).status == "ok"

        # alice clears the site's data: the page makes a new device, which waits for approval;
        # with no other browser at hand she resets the list to it, and bob sees her safety number
        # change; alice2, dropped from the list, reads nothing sent after
        before = py_loop.run(bob.safety_number(int(alice_id)))
        page.goto(f"{dev.edge_url}/style.css")  # same origin, without the app running
        page.evaluate(DELETE_KEYS)
        page.goto(dev.edge_url)
        page.wait_for_selector("html[data-e2e=pending]", timeout=15_000)
        page.click("#rooms li")
        page.wait_for_selector("#messages .e2e-warning:has-text('not yet an approved device')")
        page.click("#safety")
        page.once("dialog", lambda d: d.accept())  # the confirm() of the reset
        page.click(".e2e-safety button:has-text('reset')")
        page.wait_for_selector("html[data-e2e=active]")
        page.click(".e2e-safety button:has-text('Close')")
        page.wait_for_selector("#messages .e2e-warning:has-text('no key for this message')")
        send(page, AFTER_RESET)
        wait_texts(page, [AFTER_RESET])
        assert _bob_reads(py_loop, bob, int(room_id), AFTER_RESET).status == "ok"
        assert int(alice_id) in bob.identity_changes
        assert py_loop.run(bob.safety_number(int(alice_id))) != before
        assert py_loop.run(alice2.history(int(room_id)))[-1].status == "no_key"

        # the server's copy: ciphertext only
        q = "query($r: ID!) { messages(roomId: $r) { items { content encrypted { epoch } } } }"
        items = py_loop.run(edge.graphql(q, {"r": room_id}))["messages"]["items"]
        assert len(items) == 5 and all(m["content"] == "" and m["encrypted"] for m in items)
        for client in (edge, edge2):
            py_loop.run(client.aclose())
        code, _took = dev.interrupt()
        assert code == 0, dev.output()
        stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("shardchat.sqlite3*"))
        assert ROOM.encode() in stored  # metadata is stored in the clear: the scan sees text
        sent_texts = (FROM_WEB, FROM_WEB_EDITED, FROM_PY, FROM_PY_EDITED, FORGED)
        for text in (*sent_texts, AFTER_APPROVAL, AFTER_RESET):
            assert text.encode() not in stored, text
        assert errors == []
