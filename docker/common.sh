# Shared by the container entrypoints (sourced, not run): secrets from files, and the database wait.

DOCKER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENTRYPOINT_NAME="$(basename "$0" .sh)"
# Settings that are secrets: each may instead be given as NAME_FILE, the path of a file holding it
# (a compose secret under /run/secrets), so that its value appears in no environment listing or image.
SECRET_VARIABLES=(CHEXTRIEV_DATABASE_URL CHEXTRIEV_ADMIN_TOKEN CHEXTRIEV_PATIENT_SALT CHEXTRIEV_MILVUS_TOKEN)

fail() {
  echo "$ENTRYPOINT_NAME: error: $*" >&2
  exit 1
}

# Export NAME from the file named by NAME_FILE (trailing newlines dropped) for each secret setting.
load_secret_files() {
  local name file_variable file value
  for name in "${SECRET_VARIABLES[@]}"; do
    file_variable="${name}_FILE"
    file="${!file_variable:-}"
    [ -n "$file" ] || continue
    [ -z "${!name:-}" ] || fail "both $name and $file_variable are set: give the secret one way only"
    [ -f "$file" ] && [ -r "$file" ] || fail "$file_variable: cannot read the file $file"
    value="$(cat "$file")"
    [ -n "$value" ] || fail "$file_variable: the file $file is empty"
    export "$name=$value"
    unset "$file_variable"
  done
}

# Wait (bounded by CHEXTRIEV_DATABASE_WAIT_SECONDS, default 60) until the database answers; extra
# arguments go to wait_for_database.py (--require-head: refuse a database not at the newest revision).
wait_for_database() {
  python "$DOCKER_DIR/wait_for_database.py" --timeout "${CHEXTRIEV_DATABASE_WAIT_SECONDS:-60}" "$@"
}
