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
# 3. Another box's code location may start before the central Postgres answers (a reboot of either): with
#    IDP_OPS_WAIT_FOR_POSTGRES_S set, wait for its port that long, else exit (the restart policy retries),
#    rather than serve a location that failed to load while its healthcheck says healthy.
if [ -n "${IDP_OPS_WAIT_FOR_POSTGRES_S:-}" ] && [ -n "${DAGSTER_PG_HOST:-}" ]; then
  python3 -c '
import os, socket, sys, time
host, port = os.environ["DAGSTER_PG_HOST"], int(os.environ.get("DAGSTER_PG_PORT", "5432"))
deadline, said = time.monotonic() + float(os.environ["IDP_OPS_WAIT_FOR_POSTGRES_S"]), False
while True:
    try:
        socket.create_connection((host, port), timeout=3).close()
        sys.exit(0)
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"Postgres at {host}:{port} did not answer: {exc}")
        if not said:
            print(f"waiting for Postgres at {host}:{port} ({exc})", file=sys.stderr, flush=True)
            said = True
        time.sleep(2)
'
fi
exec "$@"
