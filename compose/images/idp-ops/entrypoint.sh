#!/bin/sh
# Every process of the ops platform starts here: the code location, webserver, daemon and run containers.
# 1. The instance: DAGSTER_HOME is on a tmpfs (read-only roots); the platform's dagster.yaml goes in it.
# 2. The Postgres password: read from the compose secret file into this process's environment only,
#    so it is never in compose, never in `docker inspect`, never on a command line.
set -eu
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp /opt/idp-ops/app/compose/ops/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
if [ -z "${DAGSTER_PG_PASSWORD:-}" ]; then
  file="${DAGSTER_PG_PASSWORD_FILE:-/run/secrets/postgres_password}"
  if [ -r "$file" ]; then
    DAGSTER_PG_PASSWORD="$(head -n 1 "$file")"
    export DAGSTER_PG_PASSWORD
  fi
fi
exec "$@"
