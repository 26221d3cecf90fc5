"""The newcomer's path through the web client in Chromium against ``shardchat dev``.

- Finding someone by name and talking to them: a direct conversation opened from the people
  search, unread and mention badges and the tab title from the server's read state (they
  survive a reload, and reading clears them, in the other tab too), the last room reopened
  after a reload, the typing indicator cleared by the typist's message (and after ~5 s without
  one), desktop notifications (asked for from a button, shown for a hidden tab, not for a muted
  room), the mute kept by the server.
- Two-factor authentication from the settings panel: enrol, confirm with a code, log in with a
  code, turn it off with a recovery code.
- The phone layout (375 px): the room list hides behind the menu button, the conversation takes
  the screen.

axe-core runs on each screen (sign-in, chat, settings, the phone's room list) and fails the
test on a serious or critical violation. Screenshots go to loadtest/results/screenshots/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.browser.dev_process import run_dev
from tests.browser.web_ui import (
    DESKTOP,
    PHONE,
    axe_violations,
    create_room,
    log_out,
    password,
    room_button,
    screenshot,
    send,
    sign_up,
    wait_online,
    wait_texts,
)

pytestmark = pytest.mark.timeout(180)

# A stand-in for the Notification API that records what the app shows, and a switch for
# document.hidden: headless Chromium has no desktop to show notifications on, and its tab is
# always "visible".
FAKE_DESKTOP = """
(() => {
  window.__notes = []; window.__asked = 0; window.__hidden = false;
  class FakeNotification {
    static permission = "default";
    static requestPermission() {
      window.__asked++; FakeNotification.permission = "granted"; return Promise.resolve("granted");
    }
    constructor(title, options) { window.__notes.push({ title, body: options?.body }); }
    close() {}
  }
  window.Notification = FakeNotification;
  Object.defineProperty(Document.prototype, "hidden", { configurable: true,
    get: () => window.__hidden });
  Object.defineProperty(Document.prototype, "visibilityState", { configurable: true,
    get: () => (window.__hidden ? "hidden" : "visible") });
})();
"""
TYPING = "document.querySelector('#typing').textContent"


def _hide(page: Any, hidden: bool) -> None:
    page.evaluate(
        "(h) => { window.__hidden = h; document.dispatchEvent(new Event('visibilitychange')); }",
        hidden,
    )


def _badges(page: Any, room: str) -> tuple[str, str]:
    """(unread, mention) badge texts of a room in the sidebar ("" when absent)."""
    button = room_button(page, room)
    unread, mention = button.locator(".count.unread"), button.locator(".count.mention")
    return (
        unread.inner_text() if unread.count() else "",
        mention.inner_text() if mention.count() else "",
    )


def _wait_badges(page: Any, room: str, wanted: tuple[str, str], within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while _badges(page, room) != wanted:
        assert time.monotonic() < deadline, f"badges {_badges(page, room)}, wanted {wanted}"
        page.wait_for_timeout(100)


def _assert_accessible(page: Any) -> None:
    found = axe_violations(page)
    assert found == [], "\n".join(found)


def test_direct_conversation_unread_typing_and_notifications(tmp_path: Path, browser: Any) -> None:
    with run_dev(tmp_path) as dev:
        ctx_a, ctx_b = (browser.new_context(viewport=DESKTOP) for _ in range(2))
        ctx_b.add_init_script(FAKE_DESKTOP)
        alice, bob = ctx_a.new_page(), ctx_b.new_page()
        errors: list[str] = []
        for page in (alice, bob):
            page.on("pageerror", lambda exc: errors.append(str(exc)))
        sign_up(bob, dev.edge_url, "bob")
        sign_up(alice, dev.edge_url, "alice")

        # alice finds bob by the start of his name and writes to him
        alice.get_by_label("Search users by name").fill("bo")
        alice.get_by_role("button", name="Message bob").click()
        alice.wait_for_selector("#composer", state="visible")
        assert alice.locator("#room-title").inner_text() == "bob"
        assert alice.locator("#room-id").inner_text() == "direct conversation"
        assert alice.locator("#leave").is_hidden()  # a direct conversation can't be left
        send(alice, "hello @bob")
        wait_texts(alice, ["hello @bob"])

        # bob's list gets the conversation by itself, with an unread and a mention badge
        room_button(bob, "alice").wait_for(timeout=20_000)
        _wait_badges(bob, "alice", ("1", "@1"))
        assert bob.title() == "(1) shardchat"
        bob.reload()
        wait_online(bob)
        _wait_badges(bob, "alice", ("1", "@1"))  # the server's read state, not the tab's memory
        assert bob.title() == "(1) shardchat"
        screenshot(bob, "desktop-unread.png")
        other_tab = ctx_b.new_page()  # bob's second tab: same login
        other_tab.goto(dev.edge_url)
        wait_online(other_tab)
        _wait_badges(other_tab, "alice", ("1", "@1"))
        room_button(bob, "alice").click()
        wait_texts(bob, ["hello @bob"])
        # READ_STATE reaches the other tab at once (its own poll comes every 10 s)
        _wait_badges(other_tab, "alice", ("", ""), within_s=4)
        assert other_tab.title() == "shardchat"
        other_tab.close()
        assert bob.locator("#messages .msg.mention").count() == 1
        _wait_badges(bob, "alice", ("", ""))
        assert bob.title() == "shardchat"
        bob.locator("#members").get_by_text("alice").wait_for()
        assert bob.locator("#messages time").count() == 1  # a timestamp on the message

        bob.reload()  # read stays read, and the last room opens again
        wait_online(bob)
        bob.wait_for_function("document.querySelector('#room-title').textContent === 'alice'")
        wait_texts(bob, ["hello @bob"])
        assert _badges(bob, "alice") == ("", "")
        assert bob.title() == "shardchat"

        # typing shows, and goes as soon as the message arrives
        bob.fill("#composer-input", "on my way")
        alice.wait_for_function(f"{TYPING}.includes('bob is typing')")
        bob.press("#composer-input", "Enter")
        wait_texts(alice, ["hello @bob", "on my way"])
        assert alice.locator("#typing").inner_text() == ""
        # ... and after a few seconds without a message
        bob.fill("#composer-input", "hmm")
        alice.wait_for_function(f"{TYPING} !== ''")
        alice.wait_for_function(f"{TYPING} === ''", timeout=8000)
        bob.fill("#composer-input", "")

        # notifications: never asked on load, asked from the button; shown while the tab is hidden
        assert bob.evaluate("window.__asked") == 0
        bob.get_by_role("button", name="Enable notifications").click()
        bob.get_by_role("button", name="Notifications on").wait_for()
        _hide(bob, True)
        send(alice, "are you there?")
        bob.wait_for_function("window.__notes.length === 1")
        assert bob.evaluate("window.__notes") == [{"title": "alice", "body": "are you there?"}]
        _wait_badges(bob, "alice", ("1", ""))  # hidden: not read yet
        assert bob.title() == "(1) shardchat"

        # muted: no notification, and the title does not count it
        bob.get_by_role("button", name="Mute").click()
        bob.wait_for_selector("#mute[aria-pressed=true]")
        send(alice, "quiet please")
        wait_texts(bob, ["are you there?", "quiet please"])
        _wait_badges(bob, "alice", ("2", ""))
        assert bob.title() == "shardchat"
        assert len(bob.evaluate("window.__notes")) == 1
        _hide(bob, False)  # back on the tab: read
        _wait_badges(bob, "alice", ("", ""))
        bob.reload()
        wait_online(bob)
        bob.wait_for_selector("#mute[aria-pressed=true]")  # the server keeps the mute
        assert bob.locator("#mute").inner_text() == "Unmute"

        assert errors == []
        ctx_a.close()
        ctx_b.close()


def test_two_factor_enrol_and_log_in_with_a_code(tmp_path: Path, browser: Any) -> None:
    with run_dev(tmp_path) as dev:
        page = browser.new_context(viewport=DESKTOP).new_page()
        sign_up(page, dev.edge_url, "carol")
        page.get_by_role("button", name="Settings").click()
        settings = page.locator("#settings")
        settings.locator("#tfa-status", has_text="Two-factor is off").wait_for()
        settings.get_by_label("Your password").fill(password("carol"))
        settings.get_by_role("button", name="Set up two-factor").click()
        secret = settings.locator("#tfa-secret")
        secret.wait_for()
        totp = pyotp.TOTP(secret.inner_text())
        uri = settings.locator("#tfa-uri").get_attribute("href") or ""
        assert uri.startswith("otpauth://totp/") and f"secret={secret.inner_text()}" in uri
        _assert_accessible(page)
        screenshot(page, "desktop-two-factor.png")
        settings.get_by_label("Code", exact=True).fill(totp.now())
        settings.get_by_role("button", name="Confirm").click()
        on = "Two-factor is on (10 recovery codes left)"
        settings.locator("#tfa-status", has_text=on).wait_for()
        recovery = settings.locator("#tfa-codes li").all_inner_texts()
        assert len(recovery) == 10
        settings.get_by_role("button", name="Close").click()
        log_out(page)

        form = page.locator("#auth-form")
        form.get_by_label("Username").fill("carol")
        form.get_by_label("Password").fill(password("carol"))
        form.get_by_role("button", name="Log in").click()
        code = form.get_by_label("Two-factor code (or a recovery code)")
        code.wait_for()
        assert "code from your authenticator" in page.locator("#auth-error").inner_text()
        assert page.locator("#chat").is_hidden()
        code.fill("000000")
        form.get_by_role("button", name="Log in").click()
        page.wait_for_function("document.querySelector('#auth-error').textContent.includes('code')")
        assert page.locator("#chat").is_hidden()
        code.fill(totp.at(time.time() + 30))  # the next step's code: the confirming one is spent
        form.get_by_role("button", name="Log in").click()
        wait_online(page)
        assert page.locator("#me").inner_text() == "carol"

        # off again, with a recovery code
        page.get_by_role("button", name="Settings").click()
        settings.locator("#tfa-status", has_text="Two-factor is on").wait_for()
        settings.get_by_label("Code (or a recovery code)").fill(recovery[0])
        settings.get_by_role("button", name="Turn off two-factor").click()
        settings.locator("#tfa-status", has_text="Two-factor is off").wait_for()


def test_phone_layout_and_accessibility(tmp_path: Path, browser: Any) -> None:
    with run_dev(tmp_path) as dev:
        page = browser.new_context(viewport=PHONE, has_touch=True).new_page()
        page.goto(dev.edge_url)
        _assert_accessible(page)  # the sign-in screen
        screenshot(page, "phone-sign-in.png")
        sign_up(page, dev.edge_url, "dave")

        sidebar, menu = page.locator("#sidebar"), page.get_by_role("button", name="Show rooms")
        assert sidebar.is_hidden() and menu.is_visible()
        _assert_accessible(page)
        menu.tap()
        page.get_by_label("New room").wait_for(state="visible")
        assert menu.get_attribute("aria-expanded") == "true"
        _assert_accessible(page)
        screenshot(page, "phone-rooms.png")
        create_room(page, "pocket")  # choosing a room closes the list
        page.wait_for_selector("#sidebar", state="hidden")
        box = page.locator("#messages").bounding_box()
        assert box is not None and box["width"] >= 355  # the conversation uses the screen
        send(page, "written on a phone")
        wait_texts(page, ["written on a phone"])
        page.locator("#messages .more").tap()  # the message actions, without a hover
        page.get_by_role("button", name="React 👍").tap()
        page.wait_for_selector("#messages .reaction.me")
        _assert_accessible(page)
        screenshot(page, "phone-room.png")
