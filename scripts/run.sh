#!/usr/bin/env bash
# Quick start: sets up .venv on first use, then runs capbot (default: `capbot chat`, the
# questionnaire in this terminal, stored in ./capbot.db). Any arguments go to capbot:
#   ./scripts/run.sh                 answer the questionnaire in the terminal
#   ./scripts/run.sh serve           run the configured channels (Telegram, email)
#   ./scripts/run.sh export --out x.zip
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/capbot ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -e . >&2
fi
[ "$#" -gt 0 ] || set -- chat
exec .venv/bin/capbot "$@"
