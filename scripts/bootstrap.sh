#!/usr/bin/env bash
# Set up the project's virtual environment (once, or again when pyproject.toml changes), then run
#   demo  -> `chextriev demo` (extra arguments are passed on)
#   test  -> the test suite with pytest (extra arguments are passed on)
# Needs only Python 3.11 on the PATH (python3.11 or python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHEXTRIEV_VENV:-$root/.venv}"
cd "$root"

find_python() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 is required (python3.11 or python3 on the PATH)" >&2
  return 1
}

ensure_venv() {
  local stamp="$venv/.chextriev-installed" wanted
  wanted="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv" >&2
    "$(find_python)" -m venv "$venv"
  fi
  echo "== installing chextriev and its test tools into $venv (first run takes a few minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e ".[test]"
  echo "$wanted" > "$stamp"
}

task="${1:-}"
[ $# -gt 0 ] && shift
case "$task" in
  demo) ensure_venv; exec "$venv/bin/chextriev" demo "$@" ;;
  test) ensure_venv; exec "$venv/bin/python" -m pytest "$@" ;;
  *) echo "usage: scripts/bootstrap.sh demo|test [arguments]" >&2; exit 2 ;;
esac
