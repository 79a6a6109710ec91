#!/bin/sh
# Postgres for the ops platform. First start: initdb with the superuser password read from a file
# (the compose secret; never an argument or a variable), scram-sha-256 for every TCP connection.
# Then run in the foreground. Runs as whatever non-root uid compose gives it.
set -eu
: "${PGDATA:=/var/lib/idp-postgres/data}"
password_file="${POSTGRES_PASSWORD_FILE:-/run/secrets/postgres_password}"
database="${POSTGRES_DB:-dagster}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -r "$password_file" ] || { echo "postgres: password file $password_file missing or unreadable" >&2; exit 1; }
  # initdb wants the file to hold the password alone; the secret may end with a newline.
  pw="$(mktemp)"
  head -n 1 "$password_file" | tr -d '\n' >"$pw"
  initdb -D "$PGDATA" -U postgres --pwfile="$pw" --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pw"
  # Listen on the container's interfaces: its only network is the compose network (and, for run
  # containers on the host network, the loopback port compose publishes).
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "unix_socket_directories = '/tmp'" >>"$PGDATA/postgresql.conf"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  postgres -D "$PGDATA" -c listen_addresses='' >/tmp/initdb-start.log 2>&1 &
  pid=$!
  for _ in $(seq 1 60); do pg_isready -q -h /tmp && break; sleep 0.5; done
  PGPASSWORD="$(head -n 1 "$password_file")" createdb -h /tmp -U postgres "$database"
  kill -INT "$pid"
  wait "$pid" || true
fi
exec "$@" -D "$PGDATA"
