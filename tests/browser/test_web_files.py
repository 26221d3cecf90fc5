"""Attachments in the web client, in real Chromium against ``shardchat dev`` (its filesystem
object store): alice attaches a PNG and a text file with the file input (each one hashed in the
page, given an upload URL by ``createUpload`` and PUT with a progress bar), sends them; bob sees
the image's thumbnail and a download link that serves the same bytes. A file dropped on the
conversation goes the same way. Refused files (over the size limit: refused by createUpload;
a program dressed as a PNG: refused by the send) show the server's message and the typed text
stays in the composer.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.browser.dev_process import run_dev
from tests.browser.web_ui import sign_up, wait_texts
from tests.files_fixtures import PE_EXE

pytestmark = pytest.mark.timeout(120)

MAX_UPLOAD = 64 * 1024  # SHARDCHAT_MAX_UPLOAD_BYTES of the dev process
SCREENSHOT = Path("/tmp/shardchat-files.png")  # docs/img/web-files.png is a copy of one
PREVIEW = ".attachments .preview img[data-kind=thumbnail]"

# A file dropped on the conversation: the drop a user's drag ends with, its DataTransfer built
# in the page (Playwright can't drag files from outside the browser).
DROP = """([name, type, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  const target = document.querySelector("#messages");
  for (const t of ["dragenter", "dragover", "drop"])
    target.dispatchEvent(new DragEvent(t, { bubbles: true, cancelable: true, dataTransfer: dt }));
}"""


def _png(width: int, height: int, sun: tuple[int, int, int]) -> bytes:
    """A little beach: sky, sea and sand in bands, and a sun."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):
        t = y / height
        band = (
            (90 + int(100 * t), 160 + int(60 * t), 235)
            if t < 0.55
            else (20, 90 + int(80 * t), 160)
            if t < 0.75
            else (230, 200 - int(30 * t), 140)
        )
        draw.line([(0, y), (width, y)], fill=band)
    r = height // 8
    draw.ellipse([width * 3 // 4 - r, height // 5 - r, width * 3 // 4 + r, height // 5 + r], sun)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _uploads_done(page: Any, count: int) -> None:
    """Until the tray holds ``count`` finished uploads, their progress bars full."""
    page.wait_for_selector(f"#uploads li.done >> nth={count - 1}", timeout=15_000)
    bars = page.eval_on_selector_all(
        "#uploads li progress", "(bs) => bs.map((b) => [b.value, b.max])"
    )
    assert len(bars) == count and all(v == m and m > 0 for v, m in bars), bars


def _send(page: Any, text: str) -> None:
    page.fill("#composer input[name=content]", text)
    page.press("#composer input[name=content]", "Enter")


def test_attach_preview_download_and_refusals(tmp_path: Path, browser: Any) -> None:
    photo, dropped = _png(640, 400, (255, 220, 60)), _png(120, 90, (250, 120, 40))
    notes = "shopping list\n- bread\n- café crème\n".encode() * 20  # not ASCII: bytes kept
    assert len(photo) < MAX_UPLOAD
    env = {"SHARDCHAT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}
    with run_dev(tmp_path, env=env) as dev:
        alice, bob = browser.new_page(), browser.new_page()  # a context of its own each
        errors: list[str] = []
        for page in (alice, bob):
            page.on("pageerror", lambda exc: errors.append(str(exc)))
        sign_up(alice, dev.edge_url, "alice")
        alice.fill("#create-room input[name=name]", "pics")
        alice.check("#create-room input[name=public]")  # bob joins it by id
        alice.click("#create-room button")
        alice.wait_for_selector("#composer", state="visible")
        room_id = re.sub(r"\D", "", alice.locator("#room-id").inner_text())
        sign_up(bob, dev.edge_url, "bob")
        bob.fill("#join-room input[name=id]", room_id)
        bob.click("#join-room button")
        bob.wait_for_selector("#composer", state="visible")

        # the file input: both files upload at once, each with its own progress bar
        alice.set_input_files(
            "#attach input",
            [
                {"name": "beach.png", "mimeType": "image/png", "buffer": photo},
                {"name": "notes.txt", "mimeType": "text/plain", "buffer": notes},
            ],
        )
        _uploads_done(alice, 2)
        _send(alice, "two files")
        alice.wait_for_selector("#uploads li", state="detached")
        wait_texts(bob, ["two files"])

        # bob: the thumbnail (made after the send, fits in 320 x 320) and a link to the text
        bob.wait_for_function(
            f"() => document.querySelector('{PREVIEW}')?.naturalWidth > 0", timeout=20_000
        )
        size = bob.eval_on_selector(PREVIEW, "(i) => [i.naturalWidth, i.naturalHeight]")
        assert size == [320, 200]
        link = bob.locator(".attachments a.file")
        assert "notes.txt" in link.inner_text()
        bob.wait_for_function(
            "() => document.querySelector('.attachments a.file')"
            "?.getAttribute('href').startsWith('/objects/')"
        )
        got = bob.request.get(dev.edge_url + str(link.get_attribute("href")))
        assert got.ok and got.body() == notes
        original = bob.request.get(
            dev.edge_url + str(bob.locator(".attachments a.preview").get_attribute("href"))
        )
        with Image.open(io.BytesIO(original.body())) as im:
            assert im.size == (640, 400)

        # drag-and-drop onto the conversation
        alice.evaluate(DROP, ["dropped.png", "image/png", base64.b64encode(dropped).decode()])
        _uploads_done(alice, 1)
        _send(alice, "dropped one")
        wait_texts(bob, ["two files", "dropped one"])
        bob.wait_for_function(
            f"() => [...document.querySelectorAll('{PREVIEW}')]"
            ".filter((i) => i.naturalWidth > 0).length === 2",
            timeout=20_000,
        )
        bob.screenshot(path=str(SCREENSHOT))

        # history (GraphQL Message.attachments) shows the same after a reload
        bob.reload()
        bob.click("#rooms li")
        bob.wait_for_function(
            f"() => [...document.querySelectorAll('{PREVIEW}')]"
            ".filter((i) => i.naturalWidth > 0).length === 2",
            timeout=20_000,
        )
        assert "notes.txt" in bob.locator(".attachments a.file").inner_text()

        # the attach button is a file input that Tab reaches from the message box
        alice.focus("#composer input[name=content]")
        alice.keyboard.press("Tab")
        assert alice.evaluate("() => document.activeElement.matches('#attach input[type=file]')")

        # too big: createUpload's message; the send is held and the text stays
        alice.set_input_files(
            "#attach input",
            {"name": "big.txt", "mimeType": "text/plain", "buffer": b"x" * (MAX_UPLOAD + 1)},
        )
        alice.wait_for_selector("#uploads li.failed")
        assert "the file is larger than 64" in alice.locator("#uploads li .error").inner_text()
        _send(alice, "keep me")
        alice.wait_for_selector("#upload-error:has-text('remove the files marked in red')")
        assert alice.input_value("#composer input[name=content]") == "keep me"
        alice.click("#uploads li .remove")

        # a program named .png: uploaded, refused by the send; its row says why
        alice.set_input_files(
            "#attach input", {"name": "cat.png", "mimeType": "image/png", "buffer": PE_EXE}
        )
        _uploads_done(alice, 1)
        alice.press("#composer input[name=content]", "Enter")
        alice.wait_for_selector("#uploads li.failed")
        refusal = alice.locator("#uploads li .error").inner_text()
        assert refusal.startswith("cat.png was refused") and "executable" in refusal
        assert alice.input_value("#composer input[name=content]") == "keep me"
        assert alice.locator("#messages .pending").count() == 0

        # removed, the text goes alone
        alice.click("#uploads li .remove")
        alice.press("#composer input[name=content]", "Enter")
        expected = ["two files", "dropped one", "keep me"]
        assert wait_texts(bob, expected) == expected
        assert errors == []
        code, _took = dev.interrupt()
        assert code == 0, dev.output()
