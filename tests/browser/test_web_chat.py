"""The web client in a real browser against ``shardchat dev``: two users register, one creates a
(private) room and invites the other (over the API: the invitation UI is not built yet), who
joins it by id in the page, they chat both ways in real time; one goes offline (its socket
dropped and the network cut), messages are sent meanwhile from both sides, and after it comes
back every message shows exactly once on both screens.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shardchat.client import EdgeClient
from tests.browser.dev_process import run_dev

pytestmark = pytest.mark.timeout(180)

SCREENSHOTS = Path("/tmp")
# Keep every WebSocket a page opens reachable from the test: the app holds its socket in a
# module variable, and the test needs to drop it the way a network failure would.
TRACK_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
})();
"""
DROP_SOCKETS = "() => window.__sockets.forEach((s) => s.readyState < 2 && s.close(4000))"


def _texts(page: Any) -> list[str]:
    return list(page.locator("#messages .msg:not(.pending) .text").all_inner_texts())


def _wait_texts(page: Any, wanted: list[str], within_s: float = 30) -> list[str]:
    """Until every wanted text shows (and nothing is still pending); the texts shown."""
    deadline = time.monotonic() + within_s
    texts: list[str] = []
    while time.monotonic() < deadline:
        texts = _texts(page)
        if all(w in texts for w in wanted) and page.locator("#messages .pending").count() == 0:
            return texts
        page.wait_for_timeout(100)
    raise AssertionError(f"wanted {wanted}, shown {texts}")


def _sign_up(page: Any, url: str, username: str) -> None:
    page.goto(url)
    assert page.locator("#chat").is_hidden()  # logged out: only the auth card shows
    page.fill("#auth-form input[name=username]", username)
    page.fill("#auth-form input[name=password]", f"{username} correct horse")
    page.click("#auth-form button[value=register]")
    page.wait_for_selector("#chat", state="visible")
    page.wait_for_selector("#conn.online", timeout=15_000)
    assert page.locator("#me").inner_text() == username


def _invite(edge_url: str, owner: str, guest: str, room_id: str) -> None:
    """The owner invites the guest to the room through the GraphQL API (a login of their own)."""

    async def invite() -> None:
        async with EdgeClient(edge_url) as client:
            await client.login(guest, f"{guest} correct horse")
            guest_id = client.session.user["id"] if client.session else ""
            await client.login(owner, f"{owner} correct horse")
            await client.invite(int(room_id), [int(guest_id)])

    # Playwright's sync API runs its own event loop in this thread: use another thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, invite()).result(30)


def _send(page: Any, text: str) -> None:
    page.fill("#composer input[name=content]", text)
    page.press("#composer input[name=content]", "Enter")


def test_two_browsers_chat_and_recover_from_going_offline(tmp_path: Path, browser: Any) -> None:
    with run_dev(tmp_path) as dev:
        ctx_a, ctx_b = browser.new_context(), browser.new_context()
        for ctx in (ctx_a, ctx_b):
            ctx.add_init_script(TRACK_SOCKETS)
        alice, bob = ctx_a.new_page(), ctx_b.new_page()
        errors: list[str] = []
        for page in (alice, bob):
            page.on("pageerror", lambda exc: errors.append(str(exc)))

        _sign_up(alice, dev.edge_url, "alice")
        alice.fill("#create-room input[name=name]", "lobby")
        alice.click("#create-room button")
        alice.wait_for_selector("#composer", state="visible")
        assert alice.locator("#room-title").inner_text() == "lobby"
        room_id = re.sub(r"\D", "", alice.locator("#room-id").inner_text())
        assert room_id

        _sign_up(bob, dev.edge_url, "bob")
        _invite(dev.edge_url, "alice", "bob", room_id)
        bob.fill("#join-room input[name=id]", room_id)
        bob.click("#join-room button")
        bob.wait_for_selector("#composer", state="visible")
        assert bob.locator("#room-title").inner_text() == "lobby"

        _send(alice, "hello bob")
        _wait_texts(bob, ["hello bob"])
        _send(bob, "hi alice")
        _wait_texts(alice, ["hello bob", "hi alice"])

        # bob drops off: socket closed like a network failure, then no network at all
        bob.evaluate(DROP_SOCKETS)
        ctx_b.set_offline(True)
        bob.wait_for_selector("#conn:not(.online)", timeout=10_000)
        _send(alice, "while you were away 1")
        _send(alice, "while you were away 2")
        _wait_texts(alice, ["while you were away 1", "while you were away 2"])
        _send(bob, "typed while offline")  # queued, sent once the session is back
        bob.wait_for_timeout(1500)
        ctx_b.set_offline(False)
        bob.wait_for_selector("#conn.online", timeout=30_000)

        expected = [
            "hello bob",
            "hi alice",
            "while you were away 1",
            "while you were away 2",
            "typed while offline",
        ]
        assert _wait_texts(bob, expected) == expected  # in order, each exactly once
        assert _wait_texts(alice, expected) == expected

        alice.screenshot(path=str(SCREENSHOTS / "shardchat-alice.png"))
        bob.screenshot(path=str(SCREENSHOTS / "shardchat-bob.png"))
        assert errors == []
        ctx_a.close()
        ctx_b.close()
        code, _took = dev.interrupt()
        assert code == 0, dev.output()
