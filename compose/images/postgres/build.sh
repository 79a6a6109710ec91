#!/usr/bin/env bash
# Build the Postgres image for compose/ops: the official postgres:15 when a registry answers is the
# default elsewhere; here (no registry) Debian bookworm's postgresql (15) via debootstrap + docker import,
# with entrypoint.sh, which initialises the data dir on first start with the password from a file.
# Cached in dockerd: a second run does nothing.
# Usage: compose/images/postgres/build.sh   (prints the image name on stdout)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../idp-ops/debian-base.sh
. "$HERE/../idp-ops/debian-base.sh"
IMAGE="${IDP_OPS_POSTGRES_IMAGE:-idp-ops/postgres:15}"
log() { printf '[postgres image] %s\n' "$*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "image $IMAGE already present; nothing to do"
  echo "$IMAGE"
  exit 0
fi

add_entrypoint() {
  install -m 0755 "$HERE/entrypoint.sh" "$1/usr/local/bin/idp-postgres-entrypoint"
  # The data volume's mount point: sticky and world-writable so the service uid (not known at build
  # time) can create its own 0700 PGDATA below it; initdb refuses anything looser for PGDATA itself.
  mkdir -p "$1/var/lib/idp-postgres" "$1/run/postgresql"
  chmod 1777 "$1/var/lib/idp-postgres" "$1/run/postgresql"
}

log "building $IMAGE with debootstrap + Debian's postgresql (~2 min)"
debian_import "$IMAGE" postgresql,ca-certificates add_entrypoint \
  --change 'ENV LANG=C.UTF-8 PGDATA=/var/lib/idp-postgres/data PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENTRYPOINT ["/usr/local/bin/idp-postgres-entrypoint"]' \
  --change 'CMD ["postgres"]'
docker image inspect "$IMAGE" --format '{{.Size}}' | awk -v img="$IMAGE" '{printf "[postgres image] %s: %.1f MB\n", img, $1/1e6}' >&2
echo "$IMAGE"
