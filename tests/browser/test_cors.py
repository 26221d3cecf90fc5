"""CORS in a real browser: a page on another origin calls the edge the way a dev server's app does.

A small static server on loopback plays the app's dev server; the page it serves (origin
``http://127.0.0.1:PORT``) makes real cross-origin requests to the edge, so Chromium enforces CORS
itself: the preflight for ``Authorization`` + JSON, then the POST, and a GET query. The same
page reached as ``http://localhost:PORT`` is another origin, not listed: refused.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.dev_process import run_dev

pytestmark = pytest.mark.timeout(120)


CALL_EDGE = """async ([graphql, token]) => {
  const headers = {"content-type": "application/json", "authorization": `Bearer ${token}`};
  const post = await fetch(graphql, {
    method: "POST", headers, body: JSON.stringify({query: "{ me { username } }"}),
  });
  const url = `${graphql}?query=${encodeURIComponent("{ __typename }")}`;
  const get = await fetch(url, {headers: {"authorization": headers.authorization}});
  return [post.status, await post.json(), get.status, await get.json()];
}"""

TRY_EDGE = """async ([graphql, token]) => {
  try {
    await fetch(graphql, {method: "POST",
      headers: {"content-type": "application/json", "authorization": `Bearer ${token}`},
      body: JSON.stringify({query: "{ __typename }"})});
    return "answered";
  } catch (err) {
    return `refused: ${err.name}`;
  }
}"""


@pytest.fixture
def app_port(tmp_path: Path) -> Iterator[int]:
    """A static server for the "app" (its own origin), on a free loopback port."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>app</title>")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _page_on(browser: Any, origin: str) -> Any:
    page = browser.new_page()
    page.goto(f"{origin}/")
    return page


def test_a_page_on_a_listed_origin_calls_the_edge(
    browser: Any, tmp_path: Path, app_port: int
) -> None:
    allowed, other = f"http://127.0.0.1:{app_port}", f"http://localhost:{app_port}"
    env = {"SHARDCHAT_CORS_ORIGINS": json.dumps([allowed])}
    with run_dev(tmp_path, env=env) as dev:
        graphql = f"{dev.edge_url}/graphql"
        registered = httpx.post(
            graphql,
            json={
                "query": 'mutation { register(username: "corsy", password: "correct horse b") '
                "{ accessToken } }"
            },
        ).json()
        token = registered["data"]["register"]["accessToken"]
        page = _page_on(browser, allowed)
        post_status, post, get_status, got = page.evaluate(CALL_EDGE, [graphql, token])
        assert (post_status, post) == (200, {"data": {"me": {"username": "corsy"}}})
        assert (get_status, got) == (200, {"data": {"__typename": "Query"}})
        refused = _page_on(browser, other).evaluate(TRY_EDGE, [graphql, token])
        assert refused == "refused: TypeError"
