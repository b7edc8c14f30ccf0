#!/usr/bin/env bash
# The project's test command: installs what the tests need, lints, runs pytest.
#
#   ./scripts/test.sh [pytest args...]      e.g. ./scripts/test.sh tests/test_servers.py -x
#
# As root on Debian it installs missing server packages (Dovecot, PostgreSQL, nginx, OpenSSL)
# with apt-get; otherwise it says what to install and goes on (tests that need a missing
# server skip, or fail when CI=true). It creates .venv if needed and installs the project
# with its test extras, runs `ruff check .`, then pytest; the exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
is_ci() { case "${CI:-}" in 1 | [Tt]rue | TRUE | yes | on) return 0 ;; *) return 1 ;; esac; }

# --- Debian packages -------------------------------------------------------------------
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have dovecot && have doveadm || missing+=(dovecot-core)
[ -x /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
[ -x /usr/lib/dovecot/lmtp ] || missing+=(dovecot-lmtpd)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
have openssl || missing+=(openssl)
have nginx || missing+=(nginx-light)  # the reverse proxy of the two-replica test
have python3 || missing+=(python3)
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
            if is_ci; then
                log "apt-get failed"
                exit 1
            fi
            log "WARNING: apt-get failed; tests that need these servers will be skipped"
        fi
    else
        log "WARNING: missing Debian packages: ${missing[*]}"
        log "  install them with: sudo apt-get install --no-install-recommends ${missing[*]}"
        log "  (tests that need them are skipped; with CI=true they fail)"
    fi
fi

# --- Python environment ------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
fi
PY=.venv/bin/python
# Reinstall when pyproject.toml or the interpreter changed (or on a fresh venv).
stamp_file=.venv/.capbot-install-stamp
stamp="$({ cat pyproject.toml; "$PY" -VV; pwd; } | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp_file" ] || [ "$(cat "$stamp_file")" != "$stamp" ] ||
    [ ! -x .venv/bin/ruff ] || ! "$PY" -c 'import pytest, pytest_asyncio' 2>/dev/null; then
    log "installing the project and its test dependencies into .venv"
    pip_log=.venv/pip-install.log
    if ! "$PY" -m pip install -q --disable-pip-version-check -e '.[test]' >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        log "pip install failed (log above, also in $pip_log)"
        exit 1
    fi
    printf '%s' "$stamp" >"$stamp_file"
fi

# --- lint, then tests ----------------------------------------------------------------------
log "ruff check ."
.venv/bin/ruff check .

log "lint-imports (architecture contracts in .importlinter)"
.venv/bin/lint-imports

log "pytest"
# exec: the script's exit status is pytest's own (5 = no tests collected is a failure too).
exec "$PY" -m pytest -q "$@"
