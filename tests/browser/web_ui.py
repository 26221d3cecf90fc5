"""Driving the web client (graphql_edge/static) from Playwright: the steps the browser tests share.

Everything goes through the page as a user would (labels, buttons); nothing calls the API behind
the page's back. ``axe_violations`` runs axe-core (tests/browser/axe, ``npm ci``'d on first use)
inside the page.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loadtest.peers.node_deps import ensure_node_deps

SCREENSHOTS = Path(__file__).resolve().parents[2] / "loadtest" / "results" / "screenshots"
AXE_DIR = Path(__file__).resolve().parent / "axe"
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 800}
PASSWORD_SUFFIX = " correct horse"


def password(username: str) -> str:
    return f"{username}{PASSWORD_SUFFIX}"


def sign_up(page: Any, url: str, username: str) -> None:
    page.goto(url)
    assert page.locator("#chat").is_hidden()  # logged out: only the auth card shows
    form = page.locator("#auth-form")
    form.get_by_label("Username").fill(username)
    form.get_by_label("Password").fill(password(username))
    form.get_by_role("button", name="Register").click()
    wait_online(page)
    assert page.locator("#me").text_content() == username


def wait_online(page: Any) -> None:
    page.wait_for_selector("#chat", state="visible")
    page.wait_for_selector("#conn.online", state="attached", timeout=15_000)


def log_out(page: Any) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_selector("#auth-form", state="visible")


def texts(page: Any) -> list[str]:
    return list(page.locator("#messages .msg:not(.pending) .text").all_inner_texts())


def wait_texts(page: Any, wanted: list[str], within_s: float = 30) -> list[str]:
    """Until every wanted text shows (and nothing is still pending); the texts shown."""
    deadline = time.monotonic() + within_s
    shown: list[str] = []
    while time.monotonic() < deadline:
        shown = texts(page)
        if all(w in shown for w in wanted) and page.locator("#messages .pending").count() == 0:
            return shown
        page.wait_for_timeout(100)
    raise AssertionError(f"wanted {wanted}, shown {shown}")


def send(page: Any, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def create_room(page: Any, name: str) -> None:
    page.get_by_label("New room").fill(name)
    page.locator("#create-room").get_by_role("button", name="Create").click()
    title = "(n) => document.querySelector('#room-title').textContent === n"
    page.wait_for_function(title, arg=name)
    assert page.locator("#composer").is_visible()


def room_button(page: Any, name: str) -> Any:
    return page.locator("#rooms button.room", has_text=name)


def invite(page: Any, username: str) -> None:
    """Invite ``username`` to the room on screen through the Invite dialog."""
    page.get_by_role("button", name="Invite", exact=True).click()
    page.locator("#invite-input").fill(username[:3])
    page.get_by_role("button", name=f"Invite {username}").click()
    page.wait_for_selector("#invite-results button:has-text('Invited')")
    page.locator("#invite-dialog").get_by_role("button", name="Close").click()


def axe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as shown (one line each)."""
    modules = ensure_node_deps(AXE_DIR, marker="axe-core")
    page.add_script_tag(path=str(modules / "axe-core" / "axe.min.js"))
    found = page.evaluate(
        """async () => (await axe.run(document)).violations
            .filter((v) => v.impact === "serious" || v.impact === "critical")
            .map((v) => `${v.impact} ${v.id}: ${v.help} `
              + `(${v.nodes.map((n) => n.target.join(" ")).join(", ")})`)"""
    )
    return list(found)


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))
