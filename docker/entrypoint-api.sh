#!/usr/bin/env bash
# The api container: secrets from files, wait for the database and refuse to start unless its schema
# is at the newest migration (the migrate service applies them), then replace this shell with the
# command, by default `chextriev serve` (settings from CHEXTRIEV_* variables; the image listens on
# 0.0.0.0:8000). Usage: entrypoint-api.sh [COMMAND [ARGUMENT...]]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

load_secret_files
wait_for_database --require-head
[ "$#" -gt 0 ] || set -- chextriev serve
exec "$@"
