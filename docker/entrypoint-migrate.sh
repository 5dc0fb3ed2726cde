#!/usr/bin/env bash
# The one-shot migrate container: secrets from files, wait for the database, then apply the Alembic
# migrations (`chextriev db upgrade`, extra arguments passed on, e.g. --revision). The api starts
# only after this container has exited successfully.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

load_secret_files
wait_for_database
exec chextriev db upgrade "$@"
