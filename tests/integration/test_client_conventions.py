"""Third-party GraphQL clients against a real edge (``shardchat dev`` in a subprocess).

The clients are the npm packages people use: Apollo Client (HttpLink with GET queries,
BatchHttpLink, GraphQLWsLink), urql with its defaults, graphql-ws, and the graphql-http audit
suite of the GraphQL-over-HTTP spec. They live in ``tests/node`` (a test-only package.json with a
committed lock file, installed here with ``npm ci``) and run with ``node --test``; each script
fails on its own assertions and this test shows its report.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.peers.node_deps import ensure_node_deps, node_binary
from tests.browser.dev_process import run_dev

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
# The scripts register many users from one address: room for them in the per-client bucket.
EDGE_ENV = {"SHARDCHAT_GRAPHQL_MUTATION_BURST": "1000"}


@pytest.fixture(scope="module")
def node_ready() -> str:
    ensure_node_deps(NODE_DIR, marker="@apollo/client")
    return node_binary()


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_dev(tmp_path_factory.mktemp("edge"), env=EDGE_ENV) as dev:
        yield dev.edge_url


def run_node_test(node: str, script: str, edge_url: str) -> None:
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", script],
        cwd=NODE_DIR,
        env=os.environ | {"SHARDCHAT_EDGE_URL": edge_url, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"node --test {script} failed:\n{report}"
    assert "fail 0" in report, report


@pytest.mark.parametrize("script", ["apollo.test.mjs", "urql.test.mjs", "graphql_ws.test.mjs"])
def test_client_library(script: str, node_ready: str, edge_url: str) -> None:
    run_node_test(node_ready, script, edge_url)


def test_graphql_over_http_audit(node_ready: str, tmp_path: Path) -> None:
    # The audits query __type: run them on an edge with introspection on (off by default).
    env = EDGE_ENV | {"SHARDCHAT_GRAPHQL_ENABLE_INTROSPECTION": "true"}
    with run_dev(tmp_path, env=env) as dev:
        run_node_test(node_ready, "http_audit.test.mjs", dev.edge_url)
