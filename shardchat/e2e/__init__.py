"""End-to-end encrypted rooms (docs/e2e.md): the scheme and the Python client."""
