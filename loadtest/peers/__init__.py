"""Peer baselines for the load test: Socket.IO (Node) and python-socketio under the e2e load.

See loadtest/peers/README.md and ``python -m loadtest peers --help``.
"""
