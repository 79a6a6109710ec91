# Sourced by the image recipes under compose/images/: a Debian bookworm root filesystem from the
# mirror apt is configured with, imported into dockerd. For machines with PyPI but no registry
# (CI here), where `FROM python:3.11-slim` / `FROM postgres:15` cannot be pulled.
# shellcheck shell=bash

# The first bookworm mirror in apt's sources (deb822 .sources or one-line .list); never a hard-coded host.
apt_mirror() {
  local uri
  uri="$(awk '/^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/{print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  if [ -z "$uri" ]; then
    uri="$(awk '$1=="deb" && $0 ~ / bookworm / {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 || true)"
  fi
  [ -n "$uri" ] || { echo "no bookworm mirror in /etc/apt/sources.list*: set IDP_DEBIAN_MIRROR" >&2; return 1; }
  printf '%s\n' "$uri"
}

# debian_import IMAGE INCLUDES [HOOK] [--change ...]: debootstrap --variant=minbase with INCLUDES
# (comma-separated), run HOOK ROOTFS (a shell function) if given, then docker import with the changes.
debian_import() {
  local image="$1" includes="$2" hook="${3:-}"
  shift 3 || shift $#
  command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install debootstrap" >&2; return 1; }
  local mirror rootfs start
  mirror="${IDP_DEBIAN_MIRROR:-$(apt_mirror)}"
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/idp-rootfs.XXXXXX")"
  start=$(date +%s)
  # Remove the tree on any exit from here (it holds device nodes, so rm as root).
  trap 'rm -rf "$rootfs"' RETURN
  debootstrap --variant=minbase --include="$includes" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    return 1
  }
  rm -f "$rootfs.log"
  # Smaller image: apt lists and caches are rebuilt by apt-get update when needed.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  if [ -n "$hook" ]; then "$hook" "$rootfs"; fi
  tar -C "$rootfs" -c . | docker import "$@" - "$image" >/dev/null
  echo "debootstrap + import of $image: $(($(date +%s) - start)) s" >&2
}
