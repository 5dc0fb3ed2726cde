#!/usr/bin/env bash
# Create the compose deployment's secrets once, as files (never in the image, .env or the compose file):
#   db_password    PostgreSQL password of the chextriev role (read by the db container)
#   database_url   the api's, migrate's and trainer's CHEXTRIEV_DATABASE_URL, with that password
#   admin_token    bearer token of the /admin routes
#   patient_salt   salt of the patient hashes and of the snapshots' patient keys
# Existing files are kept: a new patient salt would orphan every stored patient hash, and a new
# password would no longer match the database's.
# Usage: docker/init-secrets.sh [DIRECTORY]   (default: $SECRETS_DIR, else ./secrets)
# The directory is private (0700); the files in it are 0644 because compose mounts them into the
# containers as they are, where unprivileged users (chextriev, postgres) read them.
set -euo pipefail

directory="${1:-${SECRETS_DIR:-./secrets}}"
# The role, database and host of docker-compose.yml's db service.
DB_USER=chextriev DB_NAME=chextriev DB_HOST=db

random_hex() {
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

# Write `value` to the secret `name` unless it exists (a temporary file renamed into place).
write_once() {
  local name="$1" value="$2" path="$directory/$1"
  if [ -e "$path" ]; then
    echo "kept $path" >&2
    return 0
  fi
  printf '%s\n' "$value" > "$path.partial"
  chmod 0644 "$path.partial"
  mv "$path.partial" "$path"
  echo "created $path" >&2
}

mkdir -p "$directory"
chmod 0700 "$directory"
write_once db_password "$(random_hex)"
write_once database_url "postgresql+psycopg2://$DB_USER:$(cat "$directory/db_password")@$DB_HOST:5432/$DB_NAME"
write_once admin_token "$(random_hex)"
write_once patient_salt "$(random_hex)"
