#!/usr/bin/env bash
# THE test command: venv + deps, real local engines, ruff, mypy, pytest.
#
#   bash deploy/local/test.sh [pytest args...]
#
# On a fresh machine it creates .venv, installs the project with its test and bench extras,
# installs and starts PostgreSQL, Redis and Kafka (deploy/local/engines.sh), exports their
# SHARDCHAT_* settings and runs `ruff check .`, `mypy .` and `pytest -q "$@"`. All three always
# run; the exit status is non-zero if any of them failed. The engines are left running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
ENGINES="$ROOT/deploy/local/engines.sh"
VENV="$ROOT/.venv"

step() { printf '\n==> %s\n' "$*" >&2; }

# ---- Python environment ------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
	step "creating $VENV"
	if ! python3 -m venv "$VENV" 2>/dev/null; then
		rm -rf "$VENV"
		apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null
		python3 -m venv "$VENV"
	fi
fi
# Reinstall when pyproject.toml changed since the last install (or the install never finished).
stamp="$VENV/.shardchat-deps"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] ||
	! "$VENV/bin/python" -c 'import shardchat, pytest, mypy, ruff' 2>/dev/null; then
	step "pip install -e '.[test,bench]'"
	"$VENV/bin/python" -m pip install -q --upgrade pip
	"$VENV/bin/python" -m pip install -q -e '.[test,bench]'
	echo "$want" >"$stamp"
fi
export PATH="$VENV/bin:$PATH"

# ---- engines -----------------------------------------------------------------------------
step "engines: install"
t0=$SECONDS
bash "$ENGINES" install
step "engines: up all"
bash "$ENGINES" up all
eval "$(bash "$ENGINES" env)"
printf '[test] engines ready in %ss\n' "$((SECONDS - t0))" >&2

# ---- checks ------------------------------------------------------------------------------
failed=()

step "ruff check ."
ruff check . || failed+=("ruff")

step "mypy ."
mypy . || failed+=("mypy")

step "pytest -q $*"
rc=0
pytest -q "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
	echo "[test] pytest collected no tests" >&2
fi
[[ $rc -eq 0 ]] || failed+=("pytest(exit $rc)")

if [[ ${#failed[@]} -gt 0 ]]; then
	printf '\n[test] FAILED: %s\n' "${failed[*]}" >&2
	exit 1
fi
printf '\n[test] OK: ruff, mypy and pytest passed\n' >&2
