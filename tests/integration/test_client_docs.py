"""The programs of docs/clients.md run as written against a real ``shardchat dev``.

Each fenced block tagged ``file=NAME`` is copied out of the document: the JavaScript ones into
tests/node (where Apollo, urql, graphql-ws and ws are installed from the committed lock file)
and run with node, the Python one with this interpreter. Each must exit 0 and print the message
it sent as it came back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.peers.node_deps import ensure_node_deps, node_binary
from tests.browser.dev_process import run_dev

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "clients.md"
NODE_DIR = ROOT / "tests" / "node"
SNIPPETS = dict(re.findall(r"^```\w+ file=(\S+)\n(.*?)^```$", DOC.read_text(), re.M | re.S))
EXPECTED = {
    "apollo.mjs": "received: hello from Apollo",
    "urql.mjs": "received: hello from urql",
    "client.py": "received: hello from Python",
    "raw_gateway.mjs": "received: hello over a bare WebSocket",
}


def test_the_document_has_the_four_programs() -> None:
    assert set(SNIPPETS) == set(EXPECTED)


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_dev(tmp_path_factory.mktemp("docs-edge")) as dev:
        yield dev.edge_url


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_program_runs(name: str, edge_url: str, tmp_path: Path) -> None:
    if name.endswith(".mjs"):
        ensure_node_deps(NODE_DIR, marker="@apollo/client")
        # inside the package folder, so its node_modules resolve the imports; git-ignored
        script = NODE_DIR / "snippets" / name
        script.parent.mkdir(exist_ok=True)
        argv = [node_binary(), str(script)]
    else:
        script = tmp_path / name
        argv = [sys.executable, str(script)]
    script.write_text(SNIPPETS[name])
    done = subprocess.run(
        argv,
        cwd=script.parent,
        env=os.environ | {"SHARDCHAT_URL": edge_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert EXPECTED[name] in done.stdout, output
