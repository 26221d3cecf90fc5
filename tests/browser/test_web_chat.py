"""The web client in a real browser against ``shardchat dev``: two users register, one creates
a private room and invites the other from the Invite dialog (a username search), who sees the
invitation in the sidebar and accepts it (and declines another one); they chat both ways in
real time; one goes offline (its socket dropped and the network cut), messages are sent
meanwhile from both sides, and after it comes back every message shows exactly once on both
screens. Then the message actions through the visible "⋯" menu (by keyboard: react; edit;
delete), the member list, an axe-core check of the chat screen (no serious or critical
violation), and bob leaves the room. The desktop screenshot is saved under
loadtest/results/screenshots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.dev_process import run_dev
from tests.browser.web_ui import (
    DESKTOP,
    axe_violations,
    create_room,
    invite,
    room_button,
    screenshot,
    send,
    sign_up,
    wait_texts,
)

pytestmark = pytest.mark.timeout(180)
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


def test_two_browsers_chat_and_recover_from_going_offline(tmp_path: Path, browser: Any) -> None:
    with run_dev(tmp_path) as dev:
        ctx_a, ctx_b = (browser.new_context(viewport=DESKTOP) for _ in range(2))
        for ctx in (ctx_a, ctx_b):
            ctx.add_init_script(TRACK_SOCKETS)
        alice, bob = ctx_a.new_page(), ctx_b.new_page()
        errors: list[str] = []
        for page in (alice, bob):
            page.on("pageerror", lambda exc: errors.append(str(exc)))

        sign_up(bob, dev.edge_url, "bob")
        sign_up(alice, dev.edge_url, "alice")
        create_room(alice, "side")
        invite(alice, "bob")
        create_room(alice, "lobby")
        assert "private room" in alice.locator("#room-id").inner_text()
        invite(alice, "bob")

        # bob's sidebar picks the invitations up by itself (the client polls invitations)
        accept = bob.get_by_role("button", name="Accept invitation to lobby")
        accept.wait_for(timeout=20_000)
        assert bob.locator("#invitations li").count() == 2
        assert "from alice" in bob.locator("#invitations").inner_text()
        bob.get_by_role("button", name="Decline invitation to side").click()
        bob.wait_for_function("document.querySelectorAll('#invitations li').length === 1")
        accept.click()
        bob.wait_for_selector("#composer", state="visible")
        assert bob.locator("#room-title").inner_text() == "lobby"
        assert bob.locator("#invitations-box").is_hidden()
        assert room_button(bob, "lobby").get_attribute("aria-current") == "true"
        assert room_button(bob, "side").count() == 0

        send(alice, "hello bob")
        wait_texts(bob, ["hello bob"])
        send(bob, "hi alice")
        wait_texts(alice, ["hello bob", "hi alice"])

        # bob drops off: socket closed like a network failure, then no network at all
        bob.evaluate(DROP_SOCKETS)
        ctx_b.set_offline(True)
        bob.wait_for_selector("#conn:not(.online)", timeout=10_000)
        send(alice, "while you were away 1")
        send(alice, "while you were away 2")
        wait_texts(alice, ["while you were away 1", "while you were away 2"])
        send(bob, "typed while offline")  # queued, sent once the session is back
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
        assert wait_texts(bob, expected) == expected  # in order, each exactly once
        assert wait_texts(alice, expected) == expected

        # message actions from the visible "⋯" button, by keyboard: react, edit, delete
        mine = alice.locator("#messages .msg", has_text="while you were away 1")
        mine.get_by_role("button", name="Actions for the message from alice").focus()
        alice.keyboard.press("Enter")
        alice.keyboard.press("Enter")  # the menu's first action has the focus: React 👍
        bob.locator("#messages .msg", has_text="while you were away 1").locator(
            ".reaction", has_text="👍 1"
        ).wait_for()
        mine.get_by_role("button", name="Actions for the message from alice").click()
        mine.get_by_role("button", name="Edit message").click()
        alice.locator("#messages form.edit").get_by_label("Edit message").fill("while you were out")
        alice.keyboard.press("Enter")
        theirs = bob.locator("#messages .msg", has_text="while you were out")
        theirs.get_by_text("(edited)").wait_for()
        gone = alice.locator("#messages .msg", has_text="while you were away 2")
        gone.get_by_role("button", name="Actions for the message from alice").click()
        gone.get_by_role("button", name="Delete message").click()
        bob.locator("#messages .msg.deleted").wait_for()
        # everyone gets the menu (reactions) on every message but a deleted one
        assert bob.get_by_role("button", name="Actions for the message from alice").count() == 2
        assert (
            bob.locator("#messages .msg", has_text="hi alice")
            .get_by_role("button", name="Actions for the message from bob")
            .count()
            == 1
        )

        members = alice.locator("#members li")
        assert sorted(members.all_inner_texts()) == [
            "alice (you)\nonline · owner",
            "bob\nonline",
        ]
        screenshot(alice, "desktop-chat.png")
        found = axe_violations(alice)
        assert found == [], "\n".join(found)

        # bob leaves: the room goes from his list, alice sees one member left
        bob.get_by_role("button", name="Leave").click()
        room_button(bob, "lobby").wait_for(state="detached")
        assert bob.locator("#composer").is_hidden()
        alice.wait_for_function("document.querySelectorAll('#members li').length === 1")
        assert errors == []
        ctx_a.close()
        ctx_b.close()
        code, _took = dev.interrupt()
        assert code == 0, dev.output()
