#!/usr/bin/env bash
# The ops platform in containers, with one command: build what is missing (the idp-ops and Postgres
# images, the Postgres password, the API keys), then bring compose/ops up and wait until every service
# is healthy. Idempotent: a second run changes nothing and returns as soon as all is healthy.
#
# Usage: ./compose/ops/up.sh [SERVICE...]   (settings: $IDP_CONFIG or ./idp-ops.yaml; no SERVICE: all of them)
# Environment: IDP_OPS_PROJECT (idp-ops-platform), IDP_OPS_UI_PORT (3000), IDP_OPS_PG_PORT (15432),
#              IDP_OPS_ENV_FILE (where the compose env file goes; default: $IDP_HOME/ops-platform.env),
#              IDP_OPS_GPU (auto: give the code location NVML when dockerd has the nvidia runtime or CDI
#              devices; on; off), see docker-compose.gpu.yml; IDP_OPS_GUARD (auto: as IDP_OPS_GPU; on; off)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${IDP_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
CONFIG="$(realpath "${IDP_CONFIG:-$ROOT/idp-ops.yaml}")"
PROJECT="${IDP_OPS_PROJECT:-idp-ops-platform}"
log() { printf '[ops platform] %s\n' "$*" >&2; }

cd "$ROOT"
# Two daemons on one box run every schedule and sensor twice: say so when the embedded one runs here
# (a dagster-daemon in this host's pid namespace; the platform's own daemon is in a container's).
for pid in $(pgrep -f 'dagster-daemon run' 2>/dev/null || true); do
  if [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" = "$(readlink /proc/self/ns/pid)" ]; then
    log "WARNING: an embedded dagster-daemon runs on this host (pid $pid): stop it, or both run every schedule"
  fi
done
image="$("$HERE/../images/idp-ops/build.sh")"
postgres_image="$("$HERE/../images/postgres/build.sh")"

# Secrets: the endpoints' API keys and the Postgres password, created once, never overwritten.
IDP_CONFIG="$CONFIG" "$PY" -m idp_ops.cli secrets generate >/dev/null
home="$(IDP_CONFIG="$CONFIG" "$PY" - <<'PY'
import os

from idp_ops.settings import load_settings
from idp_ops.stack.secrets import ensure_postgres_password

s = load_settings()
ensure_postgres_password(s.secrets_dir, owner_uid=s.service_uid, owner_gid=s.service_gid)
# Run containers (the service uid) run the api_keys asset, which rereads and may rotate the keys in
# this dir: the service uid owns it and its files, still 0700/0600, like a box where it is not root.
if os.geteuid() == 0:
    for path in [s.secrets_dir, *s.secrets_dir.iterdir()]:
        os.chown(path, s.service_uid, s.service_gid)
# The platform's data and logs volumes are these host dirs (shared with the host's guard): the services
# and runs write them as the service uid.
for tree in (s.data_dir, s.logs_dir):
    tree.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(tree):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, s.service_uid, s.service_gid)
print(s.home)
PY
)"

# The platform dir, read-only in the webserver and the daemon only: a workspace.yaml there (other boxes'
# locations) is the one they load; other boxes' engine credentials live beside it (README).
platform_dir="${IDP_OPS_PLATFORM_DIR:-$home/ops-platform}"
mkdir -p "$platform_dir"
chmod 0700 "$platform_dir"
if [ "$(id -u)" = 0 ]; then
  chown -R "$(IDP_CONFIG="$CONFIG" "$PY" -c 'from idp_ops.settings import load_settings as l; s = l(); print(f"{s.service_uid}:{s.service_gid}")')" "$platform_dir"
fi
if [ -z "${IDP_OPS_WORKSPACE:-}" ] && [ -f "$platform_dir/workspace.yaml" ]; then
  export IDP_OPS_WORKSPACE=/etc/idp-ops/platform/workspace.yaml
  log "workspace: $platform_dir/workspace.yaml"
fi

env_file="${IDP_OPS_ENV_FILE:-$home/ops-platform.env}"
tmp="$(mktemp "$env_file.XXXXXX")"
"$PY" "$HERE/platform_env.py" --project "$PROJECT" --image "$image" --postgres-image "$postgres_image" \
  --ui-port "${IDP_OPS_UI_PORT:-3000}" --pg-port "${IDP_OPS_PG_PORT:-15432}" --config "$CONFIG" \
  --platform-dir "$platform_dir" >"$tmp"
chmod 0600 "$tmp"
mv "$tmp" "$env_file"  # atomic: compose never reads half a file

# NVML for the thermal sensor (evaluated in the code location) on a GPU box: the toolkit's utility
# capability through a device reservation (docker-compose.gpu.yml), where dockerd can provide it.
files=(-f "$HERE/docker-compose.yml")
gpu="${IDP_OPS_GPU:-auto}"
if [ "$gpu" = auto ]; then
  gpu=off
  if docker info --format '{{json .Runtimes}} {{json .CDISpecDirs}}' 2>/dev/null | grep -q nvidia \
    || ls /etc/cdi/nvidia*.yaml /var/run/cdi/nvidia*.yaml >/dev/null 2>&1; then
    gpu=on
  fi
fi
case "$gpu" in
  on) files+=(-f "$HERE/docker-compose.gpu.yml"); log "GPU box: the code location and the guard get NVML (utility capability)" ;;
  off) ;;
  *) log "IDP_OPS_GPU must be auto, on or off, not '$gpu'"; exit 2 ;;
esac
# The thermal guard, the first line of defence (docker-compose.yml says why): on a GPU box by default.
guard="${IDP_OPS_GUARD:-auto}"
[ "$guard" = auto ] && guard="$gpu"
case "$guard" in
  on) files+=(--profile guard); log "thermal guard: on" ;;
  off) ;;
  *) log "IDP_OPS_GUARD must be auto, on or off, not '$guard'"; exit 2 ;;
esac

compose=(docker compose)
docker compose version >/dev/null 2>&1 || compose=("$(dirname "$PY")/docker-compose")
start=$(date +%s)
"${compose[@]}" --env-file "$env_file" "${files[@]}" -p "$PROJECT" up -d --wait \
  --wait-timeout "${IDP_OPS_WAIT_S:-300}" "$@" >&2
log "healthy in $(($(date +%s) - start)) s (project $PROJECT, image $image)"
log "Dagster UI: http://127.0.0.1:${IDP_OPS_UI_PORT:-3000}"
log "compose: ${compose[*]} --env-file $env_file ${files[*]} -p $PROJECT ps"
